"""pycnn.functional.avg_pool2d / torch.ops.pycnn.avg_pool2d* against native average pooling."""

import pytest
import torch
import torch.nn.functional as F

from conftest import NONCONTIG_VIEWS, assert_close_scaled, check_grad_output_layouts, compare_with_native

# (N, C, H, W, kernel_size, stride, padding, ceil_mode)
GRID = {
    "odd_sizes": (2, 3, 7, 9, 3, 2, 0, False),
    "odd_sizes_overlap": (2, 3, 9, 7, 3, 1, 1, False),
    "kernel_1x1": (2, 3, 5, 6, 1, 1, 0, False),
    "kernel_1x1_stride2": (2, 3, 5, 6, 1, 2, 0, False),
    "kernel_eq_input": (2, 3, 5, 4, (5, 4), None, 0, False),
    "kernel_eq_input_padded": (2, 3, 5, 4, (5, 4), 1, (2, 2), False),
    "stride_gt_kernel": (2, 3, 11, 10, 2, 3, 0, False),
    "stride_gt_kernel_padded": (2, 3, 11, 10, (2, 3), (4, 3), 1, False),
    "asymmetric": (2, 3, 8, 9, (2, 3), (1, 2), (1, 0), False),
    "asymmetric_2": (1, 2, 12, 7, (4, 1), (3, 1), (2, 0), False),
    "ceil_basic": (2, 3, 7, 7, 2, 2, 0, True),
    "ceil_window_in_left_padding": (2, 3, 5, 5, 2, 2, 1, True),
    "ceil_last_window_dropped": (2, 3, 5, 6, 2, 2, 1, True),
    "ceil_pad_stride3": (2, 2, 7, 8, 3, 3, 1, True),
    "ceil_asymmetric": (2, 2, 6, 9, (3, 2), (2, 3), (1, 1), True),
    "ceil_kernel4_stride3": (1, 2, 4, 5, 4, 3, 2, True),
    "ceil_past_right_padding": (1, 2, 6, 6, 3, 2, 1, True),
    "batch_1": (1, 4, 6, 6, 2, 2, 0, False),
    "batch_many": (8, 2, 6, 6, 3, 2, 1, False),
    "single_pixel": (2, 3, 1, 1, 1, 1, 0, False),
    "single_pixel_padded": (2, 3, 1, 1, 3, 1, 1, True),
}


def _args(case):
    n, c, h, w, k, s, p, ceil = GRID[case]
    return (n, c, h, w), dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil)


@pytest.mark.parametrize("case", list(GRID), ids=list(GRID))
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
def test_avg_pool2d_grid(PF, case, count_include_pad, device, any_dtype):
    shape, kw = _args(case)
    x = torch.randn(shape, dtype=any_dtype, device=device)
    compare_with_native(PF.avg_pool2d, F.avg_pool2d, [x], dict(kw, count_include_pad=count_include_pad), kind="pool")


@pytest.mark.parametrize(
    "case", ["odd_sizes_overlap", "ceil_window_in_left_padding", "ceil_asymmetric", "kernel_eq_input_padded"]
)
@pytest.mark.parametrize("divisor", [1, 3, 7, -2])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
def test_avg_pool2d_divisor_override(PF, case, divisor, count_include_pad, device, dtype):
    shape, kw = _args(case)
    x = torch.randn(shape, dtype=dtype, device=device)
    compare_with_native(
        PF.avg_pool2d,
        F.avg_pool2d,
        [x],
        dict(kw, count_include_pad=count_include_pad, divisor_override=divisor),
        kind="pool",
    )


def test_avg_pool2d_defaults(PF, device, dtype):
    x = torch.randn(2, 3, 9, 8, dtype=dtype, device=device)
    # stride=None means stride = kernel_size; positional arguments as native.
    for args in [(3,), (3, None), ((2, 3),), (3, 2, 1), (3, 2, 1, True), (3, 2, 1, True, False), (3, 2, 1, True, False, 5)]:
        compare_with_native(PF.avg_pool2d, F.avg_pool2d, [x, *args], kind="pool")


def test_avg_pool2d_batch_zero(PF, device, dtype):
    x = torch.randn(0, 3, 6, 5, dtype=dtype, device=device)
    cmp = compare_with_native(PF.avg_pool2d, F.avg_pool2d, [x, 2], kind="pool")
    assert cmp.pycnn_out.shape == (0, 3, 3, 2)
    assert cmp.pycnn_grads[0].shape == x.shape


def test_avg_pool2d_unbatched(PF, device, any_dtype):
    x = torch.randn(3, 7, 8, dtype=any_dtype, device=device)
    cmp = compare_with_native(
        PF.avg_pool2d, F.avg_pool2d, [x, (3, 2), (2, 2), 1], dict(ceil_mode=True, count_include_pad=False), kind="pool"
    )
    assert cmp.pycnn_out.dim() == 3



@pytest.mark.parametrize("view", list(NONCONTIG_VIEWS), ids=list(NONCONTIG_VIEWS))
def test_avg_pool2d_noncontiguous(PF, view, device, dtype):
    fn, shape = NONCONTIG_VIEWS[view]
    x = torch.randn(shape, dtype=dtype, device=device)
    assert not fn(x).is_contiguous()
    compare_with_native(PF.avg_pool2d, F.avg_pool2d, [x, 3, 2, 1], views={0: fn}, kind="pool")


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
def test_avg_pool2d_channels_last(PF, count_include_pad, device, any_dtype):
    x = torch.randn(2, 5, 7, 6, dtype=any_dtype, device=device).contiguous(memory_format=torch.channels_last)
    compare_with_native(
        PF.avg_pool2d, F.avg_pool2d, [x, (3, 2), (2, 1), (1, 1)],
        dict(ceil_mode=True, count_include_pad=count_include_pad), kind="pool",
    )


def test_avg_pool2d_nan_inf_propagation(PF, device, dtype):
    x = torch.randn(1, 2, 6, 6, dtype=dtype, device=device)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 4, 4] = float("inf")
    out = PF.avg_pool2d(x, 3, 1, 1)
    ref = F.avg_pool2d(x, 3, 1, 1)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-5, atol=1e-6)
    assert torch.isnan(out).sum() == 9


@pytest.mark.parametrize(
    "case,count_include_pad,divisor",
    [
        ("odd_sizes_overlap", True, None),
        ("ceil_window_in_left_padding", False, None),
        ("ceil_past_right_padding", True, None),
        ("ceil_asymmetric", False, None),
        ("asymmetric", True, 4),
    ],
)
def test_avg_pool2d_gradcheck(PF, case, count_include_pad, divisor, device):
    shape, kw = _args(case)
    shape = (1,) + shape[1:]
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda t: PF.avg_pool2d(t, **kw, count_include_pad=count_include_pad, divisor_override=divisor)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)


# --- the operators directly --------------------------------------------------


def _pair(v):
    return list(v) if isinstance(v, tuple) else [v, v]


@pytest.mark.parametrize("case", ["odd_sizes_overlap", "ceil_last_window_dropped", "ceil_asymmetric"])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
@pytest.mark.parametrize("divisor", [None, 5])
def test_avg_pool2d_ops(ops, case, count_include_pad, divisor, device, dtype):
    shape, kw = _args(case)
    x = torch.randn(shape, dtype=dtype, device=device)
    k = _pair(kw["kernel_size"])
    s = _pair(kw["stride"]) if kw["stride"] is not None else k
    p = _pair(kw["padding"])
    args = (k, s, p, kw["ceil_mode"], count_include_pad, divisor)
    out = ops.avg_pool2d(x, *args)
    ref = torch.ops.aten.avg_pool2d(x, *args)
    assert out.is_contiguous() and out.dtype == dtype
    assert_close_scaled(out, ref, dtype, "pool")
    go = torch.randn_like(out)
    gi = ops.avg_pool2d_backward(go, x, *args)
    ref_gi = torch.ops.aten.avg_pool2d_backward(go, x, *args)
    assert gi.shape == x.shape and gi.dtype == dtype
    assert_close_scaled(gi, ref_gi, dtype, "pool")


def test_avg_pool2d_grad_output_layouts(PF, device, dtype):
    x = torch.randn(2, 3, 7, 6, dtype=dtype, device=device)
    check_grad_output_layouts(
        lambda x: PF.avg_pool2d(x, 3, 2, 1, True, False), lambda x: F.avg_pool2d(x, 3, 2, 1, True, False), [x],
        kind="pool",
    )


def test_avg_pool2d_expanded_input(PF, device, dtype):
    base = torch.randn(1, 3, 1, 6, dtype=dtype, device=device)
    compare_with_native(PF.avg_pool2d, F.avg_pool2d, [base, 2, 1, 1], kind="pool",
                        views={0: lambda t: t.expand(2, 3, 5, 6)})
