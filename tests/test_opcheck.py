"""torch.library.opcheck on every pycnn operator (schema, autograd registration,
fake tensor kernels, AOT dispatch with dynamic shapes)."""

import pytest
import torch

from conftest import distinct_values


def _t(*shape, device, dtype=torch.float32, grad=False, channels_last=False):
    t = torch.randn(*shape, device=device, dtype=dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def corr2d_cases(device):
    yield "basic", (_t(2, 3, 7, 6, device=device, grad=True), _t(4, 3, 3, 3, device=device, grad=True),
                    _t(4, device=device, grad=True), [1, 1], [1, 1], [1, 1], 1)
    yield "nobias_groups_strided", (_t(2, 4, 9, 8, device=device, grad=True), _t(6, 2, 3, 2, device=device, grad=True),
                                    None, [2, 1], [1, 0], [2, 1], 2)
    yield "channels_last_f64", (_t(1, 2, 6, 5, device=device, dtype=torch.float64, grad=True, channels_last=True),
                                _t(3, 2, 1, 1, device=device, dtype=torch.float64, grad=True), None,
                                [1, 1], [0, 0], [1, 1], 1)
    yield "no_grad", (_t(2, 3, 5, 5, device=device), _t(3, 3, 2, 2, device=device), _t(3, device=device),
                      [3, 3], [1, 1], [1, 1], 1)


def corr2d_backward_input_cases(device):
    # output of corr2d(2x4x9x8, 6x2x3x2, stride (2,1), pad (1,0), dil (2,1), groups 2) is 2x6x4x7
    yield "groups", (_t(2, 6, 4, 7, device=device), _t(6, 2, 3, 2, device=device), [2, 4, 9, 8],
                     [2, 1], [1, 0], [2, 1], 2)
    yield "basic", (_t(2, 4, 7, 6, device=device), _t(4, 3, 3, 3, device=device), [2, 3, 7, 6],
                    [1, 1], [1, 1], [1, 1], 1)


def corr2d_backward_weight_cases(device):
    yield "groups", (_t(2, 6, 4, 7, device=device), _t(2, 4, 9, 8, device=device), [6, 2, 3, 2],
                     [2, 1], [1, 0], [2, 1], 2)
    yield "basic_f64", (_t(2, 4, 7, 6, device=device, dtype=torch.float64),
                        _t(2, 3, 7, 6, device=device, dtype=torch.float64), [4, 3, 3, 3],
                        [1, 1], [1, 1], [1, 1], 1)
    # output_mask: an output not asked for is an empty (0,) tensor.
    yield "weight_only", (_t(2, 4, 7, 6, device=device, grad=True), _t(2, 3, 7, 6, device=device, grad=True),
                          [4, 3, 3, 3], [1, 1], [1, 1], [1, 1], 1, [True, False])
    yield "bias_only", (_t(2, 6, 4, 7, device=device, grad=True), _t(2, 4, 9, 8, device=device), [6, 2, 3, 2],
                        [2, 1], [1, 0], [2, 1], 2, [False, True])


def max_pool2d_cases(device):
    def x(shape, **kw):
        t = distinct_values(shape, kw.pop("dtype", torch.float32), device)
        if kw.get("channels_last"):
            t = t.contiguous(memory_format=torch.channels_last)
        return t.requires_grad_(True)

    yield "basic", (x((2, 3, 7, 6)), [3, 3], [2, 2], [1, 1], [1, 1], False)
    yield "ceil_dilated", (x((2, 3, 9, 8)), [3, 2], [2, 3], [1, 1], [2, 1], True)
    yield "channels_last_f64", (x((2, 3, 6, 6), dtype=torch.float64, channels_last=True),
                                [2, 2], [2, 2], [0, 0], [1, 1], False)


def max_pool2d_backward_cases(device):
    for name, args in max_pool2d_cases(device):
        x = args[0].detach()
        out, idx = torch.ops.pycnn.max_pool2d(x, *args[1:])
        yield name, (torch.randn_like(out), x, idx, *args[1:])


def avg_pool2d_cases(device):
    yield "basic", (_t(2, 3, 7, 6, device=device, grad=True), [3, 3], [2, 2], [1, 1], False, True, None)
    yield "ceil_exclude_pad", (_t(2, 3, 9, 8, device=device, grad=True), [3, 2], [2, 3], [1, 1], True, False, None)
    yield "divisor", (_t(1, 2, 6, 6, device=device, dtype=torch.float64, grad=True, channels_last=True),
                      [2, 2], [1, 1], [0, 0], False, True, 3)


def avg_pool2d_backward_cases(device):
    for name, args in avg_pool2d_cases(device):
        x = args[0].detach()
        out = torch.ops.pycnn.avg_pool2d(x, *args[1:])
        yield name, (torch.randn_like(out), x, *args[1:])


def adaptive_avg_pool2d_cases(device):
    yield "non_divisible", (_t(2, 3, 7, 9, device=device, grad=True), [3, 4])
    yield "global", (_t(2, 3, 5, 5, device=device, grad=True, channels_last=True), [1, 1])
    yield "upsample_f64", (_t(1, 2, 3, 4, device=device, dtype=torch.float64, grad=True), [5, 6])


def adaptive_avg_pool2d_backward_cases(device):
    for name, args in adaptive_avg_pool2d_cases(device):
        x = args[0].detach()
        out = torch.ops.pycnn.adaptive_avg_pool2d(x, *args[1:])
        yield name, (torch.randn_like(out), x)


def _bn_args(shape, device, *, affine=True, stats=True, training=True, dtype=torch.float32, grad=True):
    c = shape[1]
    x = _t(*shape, device=device, dtype=dtype, grad=grad)
    w = _t(c, device=device, dtype=dtype, grad=grad) if affine else None
    b = _t(c, device=device, dtype=dtype, grad=grad) if affine else None
    rm = torch.zeros(c, device=device, dtype=dtype) if stats else None
    rv = torch.ones(c, device=device, dtype=dtype) if stats else None
    return (x, w, b, rm, rv, training, 0.1, 1e-5)


def batch_norm_cases(device):
    yield "train_4d_stats", _bn_args((3, 4, 5, 5), device)
    yield "train_3d_nostats", _bn_args((3, 4, 5), device, stats=False)
    yield "train_2d_noaffine", _bn_args((6, 4), device, affine=False)
    yield "eval_4d_stats", _bn_args((3, 4, 5, 5), device, training=False)
    yield "eval_nostats_f64", _bn_args((3, 4, 5), device, stats=False, training=False, dtype=torch.float64)
    yield "train_no_grad", _bn_args((3, 4, 5, 5), device, grad=False)


def batch_norm_backward_cases(device):
    for name, args in batch_norm_cases(device):
        x, w, b, rm, rv, training, momentum, eps = args
        x = x.detach()
        w = w.detach() if w is not None else None
        b = b.detach() if b is not None else None
        rm = rm.clone() if rm is not None else None
        rv = rv.clone() if rv is not None else None
        out, save_mean, save_invstd = torch.ops.pycnn.batch_norm(x, w, b, rm, rv, training, momentum, eps)[:3]
        used_batch_stats = training or rm is None
        yield name, (torch.randn_like(out), x, w, save_mean, save_invstd, used_batch_stats)


CASES = {
    "corr2d": corr2d_cases,
    "corr2d_backward_input": corr2d_backward_input_cases,
    "corr2d_backward_weight": corr2d_backward_weight_cases,
    "max_pool2d": max_pool2d_cases,
    "max_pool2d_backward": max_pool2d_backward_cases,
    "avg_pool2d": avg_pool2d_cases,
    "avg_pool2d_backward": avg_pool2d_backward_cases,
    "adaptive_avg_pool2d": adaptive_avg_pool2d_cases,
    "adaptive_avg_pool2d_backward": adaptive_avg_pool2d_backward_cases,
    "batch_norm": batch_norm_cases,
    "batch_norm_backward": batch_norm_backward_cases,
}

# Case names per operator, for parametrisation (the tensors are built per
# device, after the extension is loaded).
def _names(op):
    return {
        "corr2d": ["basic", "nobias_groups_strided", "channels_last_f64", "no_grad"],
        "corr2d_backward_input": ["groups", "basic"],
        "corr2d_backward_weight": ["groups", "basic_f64", "weight_only", "bias_only"],
        "max_pool2d": ["basic", "ceil_dilated", "channels_last_f64"],
        "max_pool2d_backward": ["basic", "ceil_dilated", "channels_last_f64"],
        "avg_pool2d": ["basic", "ceil_exclude_pad", "divisor"],
        "avg_pool2d_backward": ["basic", "ceil_exclude_pad", "divisor"],
        "adaptive_avg_pool2d": ["non_divisible", "global", "upsample_f64"],
        "adaptive_avg_pool2d_backward": ["non_divisible", "global", "upsample_f64"],
        "batch_norm": ["train_4d_stats", "train_3d_nostats", "train_2d_noaffine", "eval_4d_stats",
                       "eval_nostats_f64", "train_no_grad"],
        "batch_norm_backward": ["train_4d_stats", "train_3d_nostats", "train_2d_noaffine", "eval_4d_stats",
                                "eval_nostats_f64", "train_no_grad"],
    }[op]


PARAMS = [pytest.param(op, name, id=f"{op}-{name}") for op in CASES for name in _names(op)]


def test_every_operator_is_covered(ops):
    schemas = {n.split("::")[1].split(".")[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pycnn::")}
    assert schemas == set(CASES), f"operators without an opcheck case: {schemas ^ set(CASES)}"


def test_case_names_are_consistent(ops):
    for op, gen in CASES.items():
        assert [n for n, _ in gen("cpu")] == _names(op), op


@pytest.mark.parametrize("op_name,case", PARAMS)
def test_opcheck(ops, op_name, case, device):
    args = dict(CASES[op_name](device))[case]
    op = getattr(ops, op_name).default
    torch.library.opcheck(op, args)
