"""Derivatives beyond the first: double backward, forward mode, forward over
reverse and reverse over forward, third order -- each checked against finite
differences (gradcheck / gradgradcheck in float64) and against native PyTorch
where native is right, across each operator's cases (samples.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jacfwd, jacrev, jvp

from samples import CORR2D as CORR2D_GRID
from samples import BATCH_NORM_CASES, POOL_CASES, pool_input

F64 = torch.float64


def _corr2d_case(case, device):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = CORR2D_GRID[case]
    x = torch.randn(n, c, h, w, dtype=F64, device=device, requires_grad=True)
    weight = torch.randn(o, c // groups, *kernel, dtype=F64, device=device, requires_grad=True)
    bias = torch.randn(o, dtype=F64, device=device, requires_grad=True)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (x, weight, bias), lambda fn: (lambda x, w, b: fn(x, w, b, **args))


def _pool_case(op, extra=None):
    def make(case, device):
        shape, kwargs = POOL_CASES[op][case]
        # Max pooling: distinct values, no ties, so finite differences do not cross an argmax switch.
        x = pool_input(op, shape, F64, device, requires_grad=True)
        kwargs = dict(kwargs, **(extra or {}))
        return (x,), lambda fn: (lambda x: fn(x, **kwargs))

    return make


MAX_GRID, AVG_GRID, ADAPTIVE_GRID = (POOL_CASES[op] for op in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"))


BATCH_NORM_GRID = BATCH_NORM_CASES


def _batch_norm_case(case, device):
    shape, training, running, affine = BATCH_NORM_GRID[case]
    c = shape[1]
    x = torch.randn(*shape, dtype=F64, device=device, requires_grad=True)
    params = (torch.randn(c, dtype=F64, device=device, requires_grad=True),
              torch.randn(c, dtype=F64, device=device, requires_grad=True)) if affine else ()

    def bind(fn):
        def call(x, *weight_bias):
            # Fresh running statistics at every call: finite differences call it many times.
            mean = torch.linspace(-1, 1, c, dtype=F64, device=device) if running else None
            var = torch.linspace(0.5, 2, c, dtype=F64, device=device) if running else None
            return fn(x, mean, var, *weight_bias, training=training)
        return call

    return (x, *params), bind


CASES = (
    [("corr2d", c) for c in CORR2D_GRID]
    + [("max_pool2d", c) for c in MAX_GRID]
    + [("avg_pool2d", c) for c in AVG_GRID]
    + [("adaptive_avg_pool2d", c) for c in ADAPTIVE_GRID]
    + [("batch_norm", c) for c in BATCH_NORM_GRID]
)
MAKERS = {"corr2d": _corr2d_case, "max_pool2d": _pool_case("max_pool2d"),
          "avg_pool2d": _pool_case("avg_pool2d", dict(count_include_pad=False)),
          "adaptive_avg_pool2d": _pool_case("adaptive_avg_pool2d"), "batch_norm": _batch_norm_case}
NATIVE = {"corr2d": F.conv2d, "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d,
          "adaptive_avg_pool2d": F.adaptive_avg_pool2d, "batch_norm": F.batch_norm}


def _functions(PF, op, case, device):
    inputs, bind = MAKERS[op](case, device)
    ours = bind(getattr(PF, "conv2d" if op == "corr2d" else op))
    return inputs, ours, bind(NATIVE[op])


def _close(actual, expected, msg=""):
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9 * scale, msg=msg)


IDS = [f"{op}-{case}" for op, case in CASES]


@pytest.mark.parametrize("op, case", CASES, ids=IDS)
def test_second_derivatives_against_finite_differences(PF, op, case, device):
    """Reverse over reverse and forward over reverse (gradgradcheck), forward
    mode (gradcheck with check_forward_ad)."""
    inputs, ours, _ = _functions(PF, op, case, device)
    assert gradcheck(ours, inputs, check_forward_ad=True, check_batched_grad=True, fast_mode=True)
    assert gradgradcheck(ours, inputs, check_fwd_over_rev=True, check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("op, case", CASES, ids=IDS)
def test_double_backward_and_jvp_match_native(PF, op, case, device):
    """The double backward of a squared-gradient penalty, the jvp and a
    Hessian-vector product (forward over reverse) equal native's."""
    inputs, ours, native = _functions(PF, op, case, device)
    tangents = tuple(torch.randn_like(t) for t in inputs)

    def penalty_gradient(fn):
        out = fn(*inputs)
        first = torch.autograd.grad((out**2).sum(), inputs, create_graph=True)
        return torch.autograd.grad(sum((g**2).sum() for g in first), inputs)

    def hvp(fn):
        primals = tuple(t.detach() for t in inputs)
        gradient = grad(lambda *a: (fn(*a) ** 2).sum(), argnums=tuple(range(len(primals))))
        return jvp(gradient, primals, tangents)[1]

    for a, b in zip(penalty_gradient(ours), penalty_gradient(native)):
        _close(a, b, "double backward")
    primals = tuple(t.detach() for t in inputs)
    _close(jvp(ours, primals, tangents)[1], jvp(native, primals, tangents)[1], "jvp")
    for a, b in zip(hvp(ours), hvp(native)):
        _close(a, b, "forward over reverse")


@pytest.mark.parametrize("case", list(BATCH_NORM_GRID), ids=list(BATCH_NORM_GRID))
def test_batch_norm_third_order_and_reverse_over_forward(PF, case, device):
    """Higher orders differentiate through the batch statistics too. (Native is
    wrong in both of these in training mode: its double-backward and jvp
    formulas take the saved statistics as constants.)"""
    inputs, ours, _ = _functions(PF, "batch_norm", case, device)

    def gradient(*args):
        return torch.autograd.grad((ours(*args) ** 3).sum(), args, create_graph=True)

    assert gradgradcheck(gradient, inputs, fast_mode=True)
    x, *params = (t.detach() for t in inputs)
    tangent = torch.randn_like(x)
    reverse_over_forward = jacrev(lambda x: jvp(lambda x: ours(x, *params), (x,), (tangent,))[1].pow(2).sum())(x)
    leaf = x.clone().requires_grad_()
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(leaf, tangent)
        out_tangent = torch.autograd.forward_ad.unpack_dual(ours(dual, *params)).tangent
    (plain,) = torch.autograd.grad(out_tangent.pow(2).sum(), leaf)
    _close(reverse_over_forward, plain, "jacrev(jvp) against backward through forward_ad")
    numeric = torch.autograd.gradcheck(
        lambda x: torch.func.jvp(lambda x: ours(x, *params), (x,), (tangent,))[1].pow(2).sum(),
        (x.clone().requires_grad_(),), fast_mode=True,
    )
    assert numeric


def test_penalty_gradient_is_not_zero(PF):
    """The issue's report: double backward used to return zeros with a warning."""
    x = torch.randn(2, 3, 8, 8, dtype=F64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    (g,) = torch.autograd.grad((PF.conv2d(x, w) ** 2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad((g**2).sum(), x)
    x_native = x.detach().requires_grad_()
    (g_native,) = torch.autograd.grad((F.conv2d(x_native, w) ** 2).sum(), x_native, create_graph=True)
    (gg_native,) = torch.autograd.grad((g_native**2).sum(), x_native)
    assert gg.abs().sum() > 0
    _close(gg, gg_native)


@pytest.mark.parametrize("fn", ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm"])
def test_forward_over_forward_raises(PF, fn, device):
    """jacfwd(jacfwd(f)) would lose the outer tangents (PyTorch's autograd
    functions cannot nest forward mode): a clear error, never zeros."""
    x = torch.randn(2, 3, 6, 6, dtype=F64, device=device)
    w = torch.randn(3, 3, 3, 3, dtype=F64, device=device)
    call = {
        "conv2d": lambda x: PF.conv2d(x, w),
        "max_pool2d": lambda x: PF.max_pool2d(x, 2),
        "avg_pool2d": lambda x: PF.avg_pool2d(x, 2),
        "adaptive_avg_pool2d": lambda x: PF.adaptive_avg_pool2d(x, 1),
        "batch_norm": lambda x: PF.batch_norm(x, None, None, training=True),
    }[fn]
    with pytest.raises(RuntimeError, match=r"forward-mode AD nested in forward-mode AD.*jacfwd\(jacrev\(f\)\)"):
        jacfwd(jacfwd(lambda x: call(x).sum()))(x)
    jacfwd(jacrev(lambda x: call(x).pow(2).sum()))(x)  # the supported nesting runs
