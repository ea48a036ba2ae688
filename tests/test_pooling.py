"""The checks the three poolings share -- max_pool2d, avg_pool2d and
adaptive_avg_pool2d against native --, written once and parametrised by
operator: the sweep over samples.POOL_CASES (window sizes, strides, padding,
dilation, ceil_mode), empty and unbatched inputs, non-contiguous,
channels_last and expanded inputs, grad_outputs of unusual layouts,
gradcheck, and the operators themselves against their ATen counterparts.
What only one pooling has (max pooling's indices, ties and NaNs, average
pooling's divisor_override, ...) is tested in tests/test_<op>.py.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import NONCONTIG_VIEWS, assert_close_scaled, check_grad_output_layouts, compare_with_native
from samples import POOL_CASES, POOL_OPS, pool_input, pool_op_args

# The forward of max pooling is a selection: compared bit for bit.
EXACT = {"max_pool2d": True, "avg_pool2d": False, "adaptive_avg_pool2d": False}


def _compare(PF, op, args, kwargs=None, **options):
    return compare_with_native(getattr(PF, op), getattr(F, op), args, kwargs, kind="pool", exact_forward=EXACT[op],
                               **options)


def _output(out):
    return out[0] if isinstance(out, tuple) else out


def _params(table):
    """pytest params (op, variant) of {op: {variant: ...}}; ids op or op-variant."""
    return [
        pytest.param(op, variant, id=f"{op}-{variant}" if variant else op)
        for op in POOL_OPS for variant in table[op]
    ]


# --- the sweep over the shared samples ------------------------------------------

# Each case of POOL_CASES[op] runs once per variant: keyword arguments added to
# the case's, or ("batch") another batch size.
GRID_VARIANTS = {
    "max_pool2d": {"indices": dict(return_indices=True)},
    "avg_pool2d": {"incl_pad": dict(count_include_pad=True), "excl_pad": dict(count_include_pad=False)},
    "adaptive_avg_pool2d": {"n1": dict(batch=1), "n3": dict(batch=3)},
}

GRID = [
    pytest.param(op, case, variant, id=f"{op}-{case}-{variant}")
    for op in POOL_OPS for case in POOL_CASES[op] for variant in GRID_VARIANTS[op]
]


@pytest.mark.parametrize("op,case,variant", GRID)
def test_pool_grid(PF, op, case, variant, device, any_dtype):
    shape, kwargs = POOL_CASES[op][case]
    extra = dict(GRID_VARIANTS[op][variant])
    if "batch" in extra:
        shape = (extra.pop("batch"),) + shape[1:]
    x = pool_input(op, shape, any_dtype, device)
    cmp = _compare(PF, op, [x], dict(kwargs, **extra))
    if op == "max_pool2d":
        out, indices = cmp.pycnn_out
        assert indices.dtype == torch.int64
        assert torch.equal(out, F.max_pool2d(x, **kwargs))  # without indices too


# --- inputs of every kind ---------------------------------------------------------

# variant -> (arguments after the input, keyword arguments, output shape of a (0, 3, 6, 5) input)
BATCH_ZERO = {
    "max_pool2d": {"values": ([2], dict(return_indices=False), (0, 3, 3, 2)),
                   "indices": ([2], dict(return_indices=True), (0, 3, 3, 2))},
    "avg_pool2d": {"": ([2], {}, (0, 3, 3, 2))},
    "adaptive_avg_pool2d": {"": ([(2, 3)], {}, (0, 3, 2, 3))},
}


@pytest.mark.parametrize("op,variant", _params(BATCH_ZERO))
def test_pool_batch_zero(PF, op, variant, device, dtype):
    args, kwargs, expected = BATCH_ZERO[op][variant]
    x = torch.randn(0, 3, 6, 5, dtype=dtype, device=device)
    cmp = compare_with_native(getattr(PF, op), getattr(F, op), [x, *args], kwargs, kind="pool")
    assert _output(cmp.pycnn_out).shape == expected
    assert cmp.pycnn_grads[0].shape == x.shape


# variant -> (arguments after a (3, 7, 8) input, keyword arguments)
UNBATCHED = {
    "max_pool2d": {"values": ([(3, 2), (2, 2), 1], dict(ceil_mode=True, return_indices=False)),
                   "indices": ([(3, 2), (2, 2), 1], dict(ceil_mode=True, return_indices=True))},
    "avg_pool2d": {"": ([(3, 2), (2, 2), 1], dict(ceil_mode=True, count_include_pad=False))},
    "adaptive_avg_pool2d": {"3x2": ([(3, 2)], {}), "Nonex4": ([(None, 4)], {}), "1": ([1], {})},
}


@pytest.mark.parametrize("op,variant", _params(UNBATCHED))
def test_pool_unbatched(PF, op, variant, device, any_dtype):
    args, kwargs = UNBATCHED[op][variant]
    x = pool_input(op, (3, 7, 8), any_dtype, device)
    cmp = _compare(PF, op, [x, *args], kwargs)
    assert _output(cmp.pycnn_out).dim() == 3


# arguments after the input, keyword arguments
WINDOW = {
    "max_pool2d": ([3, 2, 1], dict(return_indices=True)),
    "avg_pool2d": ([3, 2, 1], {}),
    "adaptive_avg_pool2d": ([(3, 2)], {}),
}


@pytest.mark.parametrize("view", list(NONCONTIG_VIEWS), ids=list(NONCONTIG_VIEWS))
@pytest.mark.parametrize("op", POOL_OPS)
def test_pool_noncontiguous(PF, op, view, device, dtype):
    fn, shape = NONCONTIG_VIEWS[view]
    x = pool_input(op, shape, dtype, device)
    assert not fn(x).is_contiguous()
    args, kwargs = WINDOW[op]
    _compare(PF, op, [x, *args], kwargs, views={0: fn})


# variant -> (arguments after a (2, 5, 7, 6) channels_last input, keyword arguments)
CHANNELS_LAST = {
    "max_pool2d": {"": ([(3, 2), (2, 1), (1, 1)], dict(return_indices=True, ceil_mode=True))},
    "avg_pool2d": {
        "incl_pad": ([(3, 2), (2, 1), (1, 1)], dict(ceil_mode=True, count_include_pad=True)),
        "excl_pad": ([(3, 2), (2, 1), (1, 1)], dict(ceil_mode=True, count_include_pad=False)),
    },
    "adaptive_avg_pool2d": {"3x4": ([(3, 4)], {}), "1": ([1], {})},
}


@pytest.mark.parametrize("op,variant", _params(CHANNELS_LAST))
def test_pool_channels_last(PF, op, variant, device, any_dtype):
    args, kwargs = CHANNELS_LAST[op][variant]
    x = pool_input(op, (2, 5, 7, 6), any_dtype, device, channels_last=True)
    _compare(PF, op, [x, *args], kwargs)


# the window of the functional, positionally
LAYOUT_WINDOW = {"max_pool2d": (3, 1, 1), "avg_pool2d": (3, 2, 1, True, False), "adaptive_avg_pool2d": ((3, 4),)}


@pytest.mark.parametrize("op", POOL_OPS)
def test_pool_grad_output_layouts(PF, op, device, dtype):
    x = pool_input(op, (2, 3, 7, 6), dtype, device)
    window = LAYOUT_WINDOW[op]
    check_grad_output_layouts(
        lambda x: getattr(PF, op)(x, *window), lambda x: getattr(F, op)(x, *window), [x], kind="pool"
    )


EXPANDED = {
    "max_pool2d": ([2, 1], dict(return_indices=True)),
    "avg_pool2d": ([2, 1, 1], {}),
    "adaptive_avg_pool2d": ([(2, 4)], {}),
}


@pytest.mark.parametrize("op", POOL_OPS)
def test_pool_expanded_input(PF, op, device, dtype):
    base = pool_input(op, (1, 3, 1, 6), dtype, device)
    args, kwargs = EXPANDED[op]
    compare_with_native(getattr(PF, op), getattr(F, op), [base, *args], kwargs, kind="pool",
                        views={0: lambda t: t.expand(2, 3, 5, 6)})


# --- gradcheck ----------------------------------------------------------------------

# variant -> (case of POOL_CASES[op], keyword arguments added to the case's); batch 1, float64.
GRADCHECK = {
    "max_pool2d": {
        case: (case, {})
        for case in ["odd_sizes_overlap", "ceil_window_in_left_padding", "dilation_padding_stride", "asymmetric"]
    },
    "avg_pool2d": {
        f"{case}-{'incl' if include else 'excl'}_pad-{divisor}": (
            case, dict(count_include_pad=include, divisor_override=divisor)
        )
        for case, include, divisor in [
            ("odd_sizes_overlap", True, None),
            ("ceil_window_in_left_padding", False, None),
            ("ceil_past_right_padding", True, None),
            ("ceil_asymmetric", False, None),
            ("asymmetric", True, 4),
        ]
    },
    "adaptive_avg_pool2d": {
        case: (case, {}) for case in ["non_divisible", "larger_than_input", "global_int", "none_height"]
    },
}


@pytest.mark.parametrize("op,variant", _params(GRADCHECK))
def test_pool_gradcheck(PF, op, variant, device):
    case, extra = GRADCHECK[op][variant]
    shape, kwargs = POOL_CASES[op][case]
    kwargs = dict(kwargs, **extra)
    x = pool_input(op, (1,) + shape[1:], torch.float64, device, requires_grad=True)
    fn = getattr(PF, op)
    assert torch.autograd.gradcheck(lambda t: fn(t, **kwargs), (x,), eps=1e-6, atol=1e-6)


# --- the operators directly, against ATen's -----------------------------------------


def _aten(op, grad_output, x, args):
    """ATen's forward output and gradient of the input for the operator's arguments."""
    if op == "max_pool2d":
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, *args)
        return (out, indices), torch.ops.aten.max_pool2d_with_indices_backward(grad_output, x, *args, indices)
    if op == "avg_pool2d":
        return torch.ops.aten.avg_pool2d(x, *args), torch.ops.aten.avg_pool2d_backward(grad_output, x, *args)
    out = torch.ops.aten._adaptive_avg_pool2d(x, *args)
    return out, torch.ops.aten._adaptive_avg_pool2d_backward(grad_output, x)


# variant -> (case of POOL_CASES[op], keyword arguments added to the case's)
OPS = {
    "max_pool2d": {
        case: (case, {}) for case in ["odd_sizes_overlap", "ceil_last_window_dropped", "dilation_padding_stride"]
    },
    "avg_pool2d": {
        f"{case}-{'incl' if include else 'excl'}_pad-{divisor}": (
            case, dict(count_include_pad=include, divisor_override=divisor)
        )
        for case in ["odd_sizes_overlap", "ceil_last_window_dropped", "ceil_asymmetric"]
        for include in (True, False)
        for divisor in (None, 5)
    },
    "adaptive_avg_pool2d": {
        case: (case, {}) for case in ["non_divisible", "larger_than_input", "identity", "global_pair"]
    },
}


@pytest.mark.parametrize("op,variant", _params(OPS))
def test_pool_ops(ops, op, variant, device, dtype):
    case, extra = OPS[op][variant]
    shape, kwargs = POOL_CASES[op][case]
    x = pool_input(op, shape, dtype, device)
    args = pool_op_args(op, dict(kwargs, **extra), shape)
    out = getattr(ops, op)(x, *args)
    grad_output = torch.randn_like(_output(out))
    ref_out, ref_grad_input = _aten(op, grad_output, x, args)
    if op == "max_pool2d":
        (out, indices), (ref_out, ref_indices) = out, ref_out
        assert indices.is_contiguous() and torch.equal(indices, ref_indices)
        assert torch.equal(out, ref_out)
        grad_input = ops.max_pool2d_backward(grad_output, x, indices, *args)
    elif op == "avg_pool2d":
        assert_close_scaled(out, ref_out, dtype, "pool")
        grad_input = ops.avg_pool2d_backward(grad_output, x, *args)
    else:
        assert_close_scaled(out, ref_out, dtype, "pool")
        grad_input = ops.adaptive_avg_pool2d_backward(grad_output, x)
    assert out.is_contiguous() and out.dtype == dtype
    assert grad_input.shape == x.shape and grad_input.dtype == dtype
    assert_close_scaled(grad_input, ref_grad_input, dtype, "pool")
