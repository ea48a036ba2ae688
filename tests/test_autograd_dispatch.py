"""The C++ Autograd kernel of every operator (csrc/python_module.cpp).

A call that needs no derivative runs the kernels below autograd straight from
C++; every other call runs the Python derivatives of pycnn/_autograd.py. The
tests below check the line between the two: each kind of call that must be
recorded (an input requiring grad, a forward-mode tangent on any input, a
torch.func transform) still is, and the calls that need nothing give the same
values, without a graph.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import pycnn.functional as P

ops = torch.ops.pycnn

# name -> (pycnn call, native call) on one 4-D input
CALLS = {
    "corr2d": (lambda x, w: P.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
    "max_pool2d": (lambda x, w: P.max_pool2d(x * w.sum(), 2), lambda x, w: F.max_pool2d(x * w.sum(), 2)),
    "avg_pool2d": (
        lambda x, w: P.avg_pool2d(x * w.sum(), 2, padding=1),
        lambda x, w: F.avg_pool2d(x * w.sum(), 2, padding=1),
    ),
    "adaptive_avg_pool2d": (
        lambda x, w: P.adaptive_avg_pool2d(x * w.sum(), 3),
        lambda x, w: F.adaptive_avg_pool2d(x * w.sum(), 3),
    ),
    "batch_norm": (
        lambda x, w: P.batch_norm(x, None, None, w[:, 0, 0, 0], None, training=True),
        lambda x, w: F.batch_norm(x, None, None, w[:, 0, 0, 0], None, training=True),
    ),
}


def _inputs(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    w = torch.randn(4, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    return x, w


@pytest.mark.parametrize("name", CALLS)
def test_calls_without_derivatives_match_and_record_nothing(name):
    ours, native = CALLS[name]
    x, w = _inputs()
    expected = native(x, w)
    with torch.no_grad():
        torch.testing.assert_close(ours(*_inputs(requires_grad=True)), expected)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x, w), expected)
    y = ours(x, w)  # grad mode on, nothing requires grad
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("name", CALLS)
def test_an_input_requiring_grad_is_recorded(name):
    ours, native = CALLS[name]
    for which in (0, 1):  # only x, then only w, requires grad
        x, w = _inputs()
        (x if which == 0 else w).requires_grad_()
        y = ours(x, w)
        assert y.grad_fn is not None
        leaf = x if which == 0 else w
        (grad,) = torch.autograd.grad(y.sum(), leaf, create_graph=True)
        xn, wn = x.detach().requires_grad_(which == 0), w.detach().requires_grad_(which == 1)
        (expected,) = torch.autograd.grad(native(xn, wn).sum(), xn if which == 0 else wn, create_graph=True)
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("name", CALLS)
def test_a_forward_mode_tangent_is_recorded_without_requires_grad(name):
    ours, native = CALLS[name]
    x, w = _inputs()
    tangent = torch.ones_like(x)
    results = []
    for f in (ours, native):
        with fwAD.dual_level():
            y = f(fwAD.make_dual(x, tangent), w)
            results.append(fwAD.unpack_dual(y).tangent)
    assert results[0] is not None
    torch.testing.assert_close(results[0], results[1])


def test_torch_func_transforms_are_recorded():
    x, w = _inputs()
    f = lambda x: P.max_pool2d(P.conv2d(x, w, padding=1), 2).sum()  # noqa: E731
    g = lambda x: F.max_pool2d(F.conv2d(x, w, padding=1), 2).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(x), torch.func.grad(g)(x))
    per_sample = torch.func.vmap(torch.func.grad(f))
    torch.testing.assert_close(per_sample(x[:, None]), torch.func.vmap(torch.func.grad(g))(x[:, None]))
    tangent = (torch.ones_like(x),)
    torch.testing.assert_close(torch.func.jvp(f, (x,), tangent)[1], torch.func.jvp(g, (x,), tangent)[1])


def test_errors_of_the_kernels_come_through_both_paths():
    x = torch.randn(1, 3, 5, 5)
    w = torch.randn(2, 4, 3, 3)  # 4 input channels, the input has 3
    for requires_grad in (False, True):
        with pytest.raises(RuntimeError, match="pycnn.corr2d: input has 3 channels but weight expects in_channels"):
            ops.corr2d(x.requires_grad_(requires_grad), w, None, [1, 1], [0, 0], [1, 1], 1)


@pytest.mark.parametrize("name", CALLS)
def test_every_backward_operator_is_recorded_too(name):
    """With create_graph, the backward formulas' own operators (corr2d_backward_*, *_backward) need
    derivatives: their calls are recorded, and a second derivative matches native's."""
    ours, native = CALLS[name]
    results = []
    for f in (ours, native):
        x, w = _inputs(requires_grad=True)
        (gx,) = torch.autograd.grad((f(x, w) ** 2).sum(), x, create_graph=True)
        assert gx.grad_fn is not None
        results.append(torch.autograd.grad(gx.sum(), w)[0])
    torch.testing.assert_close(results[0], results[1])
