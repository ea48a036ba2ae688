"""pycnn.functional.max_pool2d / torch.ops.pycnn.max_pool2d* against native max
pooling: what only max pooling has (indices, ties, NaN and infinities, windows
entirely in the padding). The checks it shares with the other poolings, on
the cases of samples.POOL_CASES["max_pool2d"], are in test_pooling.py."""

import pytest
import torch
import torch.nn.functional as F

from conftest import compare_with_native, distinct_values
from samples import POOL_CASES


def _args(case):
    return POOL_CASES["max_pool2d"][case]


@pytest.mark.parametrize("case", ["odd_sizes", "ceil_window_in_left_padding", "asymmetric"])
def test_max_pool2d_without_indices(PF, case, device, dtype):
    shape, kw = _args(case)
    x = distinct_values(shape, dtype, device)
    cmp = compare_with_native(PF.max_pool2d, F.max_pool2d, [x], kw, kind="pool", exact_forward=True)
    assert isinstance(cmp.pycnn_out, torch.Tensor)


def test_max_pool2d_defaults(PF, device, dtype):
    x = distinct_values((2, 3, 9, 8), dtype, device)
    # stride=None means stride = kernel_size; positional arguments as native.
    for args in [(3,), (3, None), ((2, 3),), (3, 2, 1), (3, 2, 1, 2, True)]:
        compare_with_native(PF.max_pool2d, F.max_pool2d, [x, *args], kind="pool", exact_forward=True)
    out, idx = PF.max_pool2d(x, 2, return_indices=True)
    ref_out, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)


def test_max_pool2d_nan_propagation(PF, device, dtype):
    x = distinct_values((2, 3, 8, 8), dtype, device)
    x[0, 0, 3, 4] = float("nan")
    x[1, 2, 0, 0] = float("nan")
    x[1, 1, 7, 7] = float("nan")
    kw = dict(kernel_size=3, stride=2, padding=1, return_indices=True)
    out, idx = PF.max_pool2d(x, **kw)
    ref_out, ref_idx = F.max_pool2d(x, **kw)
    assert torch.equal(torch.isnan(out), torch.isnan(ref_out))
    assert torch.isnan(out).sum() > 3  # overlapping windows see the same NaN
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(idx, ref_idx)
    # The gradient flows to the NaN positions, as native.
    compare_with_native(PF.max_pool2d, F.max_pool2d, [x], kw, kind="pool")


def test_max_pool2d_ties(PF, device, dtype):
    # Ties (e.g. the zeros after a ReLU): native picks the first maximum in
    # row-major window order; indices and gradients must match.
    x = torch.randint(0, 3, (2, 3, 7, 8), device=device).to(dtype)
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, dilation=2)]:
        compare_with_native(
            PF.max_pool2d, F.max_pool2d, [x], dict(kw, return_indices=True), kind="pool", exact_forward=True
        )


def test_max_pool2d_infinities(PF, device, dtype):
    x = distinct_values((1, 2, 6, 6), dtype, device)
    x[0, 0, :2, :2] = float("-inf")
    x[0, 1, 2, 3] = float("inf")
    compare_with_native(
        PF.max_pool2d, F.max_pool2d, [x, 2, 2], dict(return_indices=True), kind="pool", exact_forward=True
    )


@pytest.mark.parametrize(
    "shape,kw",
    [
        ((1, 1, 1, 1), dict(kernel_size=2, padding=1, dilation=2)),
        ((2, 3, 2, 5), dict(kernel_size=(2, 3), stride=(1, 2), padding=1, dilation=(3, 1))),
        ((1, 2, 4, 1), dict(kernel_size=(1, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2))),
    ],
    ids=["1x1_plane", "2x5_plane", "4x1_plane"],
)
def test_max_pool2d_window_entirely_in_padding(PF, shape, kw, device, dtype):
    # With dilation > 1 a window can hold no input element at all (every tap
    # falls in the padding). Native returns -inf for it and an index that is
    # past the plane or names an element outside the window (its first row
    # and column, unclipped); pycnn returns the same, and its backward routes
    # that window's gradient nowhere, on every device: the output does not
    # depend on the input. (Native's CPU backward writes it to that index, out
    # of bounds or into the wrong element, so it is not run here: the expected
    # gradient is built from the windows that hold elements.)
    x = distinct_values(shape, dtype, device)
    ref_out, ref_indices = F.max_pool2d(x, return_indices=True, **kw)
    assert torch.isinf(ref_out).any()  # the case is really exercised
    x = x.clone().requires_grad_()
    out, indices = PF.max_pool2d(x, return_indices=True, **kw)
    assert torch.equal(out, ref_out) and torch.equal(indices, ref_indices)
    grad_output = torch.randn_like(out)
    out.backward(grad_output)
    plane = shape[-1] * shape[-2]
    valid = ~torch.isinf(ref_out)
    expected = torch.zeros(x.shape[:-2] + (plane,), dtype=dtype, device=device)
    expected.scatter_add_(-1, torch.where(valid, indices, 0).flatten(-2),
                          torch.where(valid, grad_output, 0).flatten(-2))
    torch.testing.assert_close(x.grad, expected.view(x.shape), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_max_pool2d_cuda_backward_is_deterministic(PF, dtype):
    # Stride 1 and a 3x3 window on few distinct values: up to nine windows share
    # an argmax, where a scatter with atomics would add in a varying order.
    x = torch.randint(0, 3, (4, 8, 32, 32), device="cuda").to(dtype).requires_grad_()
    grad = torch.randn(4, 8, 30, 30, device="cuda", dtype=dtype)
    torch.use_deterministic_algorithms(True)
    try:
        first, = torch.autograd.grad(PF.max_pool2d(x, 3, stride=1), x, grad)
        for _ in range(5):
            again, = torch.autograd.grad(PF.max_pool2d(x, 3, stride=1), x, grad)
            assert torch.equal(again, first)
    finally:
        torch.use_deterministic_algorithms(False)
    x_native = x.detach().requires_grad_()
    native, = torch.autograd.grad(torch.nn.functional.max_pool2d(x_native, 3, stride=1), x_native, grad)
    torch.testing.assert_close(first, native, rtol=1e-3 if dtype == torch.float16 else 1e-5, atol=1e-2)
