"""pycnn.functional.max_pool2d / torch.ops.pycnn.max_pool2d* against native max pooling."""

import pytest
import torch
import torch.nn.functional as F

from conftest import NONCONTIG_VIEWS, assert_close_scaled, check_grad_output_layouts, compare_with_native, distinct_values

# (N, C, H, W, kernel_size, stride, padding, dilation, ceil_mode)
GRID = {
    "odd_sizes": (2, 3, 7, 9, 3, 2, 0, 1, False),
    "odd_sizes_overlap": (2, 3, 9, 7, 3, 1, 1, 1, False),
    "kernel_1x1": (2, 3, 5, 6, 1, 1, 0, 1, False),
    "kernel_1x1_stride2": (2, 3, 5, 6, 1, 2, 0, 1, False),
    "kernel_eq_input": (2, 3, 5, 4, (5, 4), None, 0, 1, False),
    "kernel_eq_input_padded": (2, 3, 5, 4, (5, 4), 1, (2, 2), 1, False),
    "stride_gt_kernel": (2, 3, 11, 10, 2, 3, 0, 1, False),
    "stride_gt_kernel_padded": (2, 3, 11, 10, (2, 3), (4, 3), 1, 1, False),
    "dilation_padding": (2, 2, 9, 8, 3, 1, 1, 2, False),
    "dilation_padding_stride": (2, 2, 10, 11, (3, 2), 2, (1, 1), (2, 3), False),
    "asymmetric": (2, 3, 8, 9, (2, 3), (1, 2), (1, 0), (1, 2), False),
    "asymmetric_2": (1, 2, 12, 7, (4, 1), (3, 1), (2, 0), 1, False),
    "ceil_basic": (2, 3, 7, 7, 2, 2, 0, 1, True),
    "ceil_window_in_left_padding": (2, 3, 5, 5, 2, 2, 1, 1, True),
    "ceil_last_window_dropped": (2, 3, 5, 6, 2, 2, 1, 1, True),
    "ceil_pad_stride3": (2, 2, 7, 8, 3, 3, 1, 1, True),
    "ceil_asymmetric": (2, 2, 6, 9, (3, 2), (2, 3), (1, 1), 1, True),
    "ceil_dilated": (2, 2, 9, 10, 3, 2, 1, 2, True),
    "ceil_kernel4_stride3": (1, 2, 4, 5, 4, 3, 2, 1, True),
    "batch_1": (1, 4, 6, 6, 2, 2, 0, 1, False),
    "batch_many": (8, 2, 6, 6, 3, 2, 1, 1, False),
    "single_pixel": (2, 3, 1, 1, 1, 1, 0, 1, False),
    "single_pixel_padded": (2, 3, 1, 1, 3, 1, 1, 1, True),
}


def _args(case):
    n, c, h, w, k, s, p, d, ceil = GRID[case]
    return (n, c, h, w), dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


@pytest.mark.parametrize("case", list(GRID), ids=list(GRID))
def test_max_pool2d_grid(PF, case, device, any_dtype):
    shape, kw = _args(case)
    x = distinct_values(shape, any_dtype, device)
    cmp = compare_with_native(
        PF.max_pool2d, F.max_pool2d, [x], dict(kw, return_indices=True), kind="pool", exact_forward=True
    )
    out, idx = cmp.pycnn_out
    assert idx.dtype == torch.int64
    # The forward is a selection: the values must be bit-identical.
    assert torch.equal(out, F.max_pool2d(x, **kw))


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


@pytest.mark.parametrize("return_indices", [False, True])
def test_max_pool2d_batch_zero(PF, return_indices, device, dtype):
    x = torch.randn(0, 3, 6, 5, dtype=dtype, device=device)
    cmp = compare_with_native(
        PF.max_pool2d, F.max_pool2d, [x, 2], dict(return_indices=return_indices), kind="pool"
    )
    out = cmp.pycnn_out[0] if return_indices else cmp.pycnn_out
    assert out.shape == (0, 3, 3, 2)
    assert cmp.pycnn_grads[0].shape == x.shape


@pytest.mark.parametrize("return_indices", [False, True])
def test_max_pool2d_unbatched(PF, return_indices, device, any_dtype):
    x = distinct_values((3, 7, 8), any_dtype, device)
    cmp = compare_with_native(
        PF.max_pool2d, F.max_pool2d, [x, (3, 2), (2, 2), 1], dict(ceil_mode=True, return_indices=return_indices),
        kind="pool", exact_forward=True,
    )
    out = cmp.pycnn_out[0] if return_indices else cmp.pycnn_out
    assert out.dim() == 3



@pytest.mark.parametrize("view", list(NONCONTIG_VIEWS), ids=list(NONCONTIG_VIEWS))
def test_max_pool2d_noncontiguous(PF, view, device, dtype):
    fn, shape = NONCONTIG_VIEWS[view]
    x = distinct_values(shape, dtype, device)
    assert not fn(x).is_contiguous()
    compare_with_native(
        PF.max_pool2d, F.max_pool2d, [x, 3, 2, 1], dict(return_indices=True), views={0: fn}, kind="pool",
        exact_forward=True,
    )


def test_max_pool2d_channels_last(PF, device, any_dtype):
    x = distinct_values((2, 5, 7, 6), any_dtype, device).contiguous(memory_format=torch.channels_last)
    compare_with_native(
        PF.max_pool2d, F.max_pool2d, [x, (3, 2), (2, 1), (1, 1)], dict(return_indices=True, ceil_mode=True),
        kind="pool", exact_forward=True,
    )


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
    "case", ["odd_sizes_overlap", "ceil_window_in_left_padding", "dilation_padding_stride", "asymmetric"]
)
def test_max_pool2d_gradcheck(PF, case, device):
    shape, kw = _args(case)
    shape = (1,) + shape[1:]
    x = distinct_values(shape, torch.float64, device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: PF.max_pool2d(t, **kw), (x,), eps=1e-6, atol=1e-6)


# --- the operators directly --------------------------------------------------


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


@pytest.mark.parametrize("case", ["odd_sizes_overlap", "ceil_last_window_dropped", "dilation_padding_stride"])
def test_max_pool2d_ops(ops, case, device, dtype):
    shape, kw = _args(case)
    x = distinct_values(shape, dtype, device)
    k = _pair(kw["kernel_size"])
    s = _pair(kw["stride"]) if kw["stride"] is not None else k
    p, d = _pair(kw["padding"]), _pair(kw["dilation"])
    out, idx = ops.max_pool2d(x, k, s, p, d, kw["ceil_mode"])
    ref_out, ref_idx = torch.ops.aten.max_pool2d_with_indices(x, k, s, p, d, kw["ceil_mode"])
    assert out.is_contiguous() and idx.is_contiguous()
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)
    go = torch.randn_like(out)
    gi = ops.max_pool2d_backward(go, x, idx, k, s, p, d, kw["ceil_mode"])
    ref_gi = torch.ops.aten.max_pool2d_with_indices_backward(go, x, k, s, p, d, kw["ceil_mode"], ref_idx)
    assert gi.shape == x.shape and gi.dtype == dtype
    assert_close_scaled(gi, ref_gi, dtype, "pool")


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


def test_max_pool2d_grad_output_layouts(PF, device, dtype):
    x = distinct_values((2, 3, 7, 6), dtype, device)
    check_grad_output_layouts(
        lambda x: PF.max_pool2d(x, 3, 1, 1), lambda x: F.max_pool2d(x, 3, 1, 1), [x], kind="pool"
    )


def test_max_pool2d_expanded_input(PF, device, dtype):
    base = distinct_values((1, 3, 1, 6), dtype, device)
    compare_with_native(
        PF.max_pool2d, F.max_pool2d, [base, 2, 1], dict(return_indices=True), kind="pool",
        views={0: lambda t: t.expand(2, 3, 5, 6)},
    )


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
