"""pycnn.functional.adaptive_avg_pool2d / torch.ops.pycnn.adaptive_avg_pool2d* against native."""

import pytest
import torch
import torch.nn.functional as F

from conftest import NONCONTIG_VIEWS, assert_close_scaled, check_grad_output_layouts, compare_with_native

# (input spatial size, output_size as passed to the functional)
GRID = {
    "global_int": ((7, 9), 1),
    "global_pair": ((6, 5), (1, 1)),
    "identity": ((5, 7), (5, 7)),
    "divisible": ((8, 6), (4, 3)),
    "non_divisible": ((7, 9), (3, 4)),
    "non_divisible_2": ((13, 10), (5, 7)),
    "larger_than_input": ((3, 4), (5, 7)),
    "int_size": ((9, 8), 4),
    "none_height": ((9, 8), (None, 3)),
    "none_width": ((9, 8), (2, None)),
    "none_both": ((5, 6), (None, None)),
    "single_pixel_input": ((1, 1), (2, 3)),
    "row_input": ((1, 9), (1, 4)),
}


@pytest.mark.parametrize("case", list(GRID), ids=list(GRID))
@pytest.mark.parametrize("n", [1, 3])
def test_adaptive_avg_pool2d_grid(PF, case, n, device, any_dtype):
    (h, w), out = GRID[case]
    x = torch.randn(n, 3, h, w, dtype=any_dtype, device=device)
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, out], kind="pool")


def test_adaptive_avg_pool2d_list_output_size(PF, device, dtype):
    x = torch.randn(2, 3, 7, 9, dtype=dtype, device=device)
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, [3, 2]], kind="pool")
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x], dict(output_size=(2, 5)), kind="pool")


def test_adaptive_avg_pool2d_batch_zero(PF, device, dtype):
    x = torch.randn(0, 3, 6, 5, dtype=dtype, device=device)
    cmp = compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, (2, 3)], kind="pool")
    assert cmp.pycnn_out.shape == (0, 3, 2, 3)
    assert cmp.pycnn_grads[0].shape == x.shape


@pytest.mark.parametrize("out", [(3, 2), (None, 4), 1])
def test_adaptive_avg_pool2d_unbatched(PF, out, device, any_dtype):
    x = torch.randn(3, 7, 8, dtype=any_dtype, device=device)
    cmp = compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, out], kind="pool")
    assert cmp.pycnn_out.dim() == 3



@pytest.mark.parametrize("view", list(NONCONTIG_VIEWS), ids=list(NONCONTIG_VIEWS))
def test_adaptive_avg_pool2d_noncontiguous(PF, view, device, dtype):
    fn, shape = NONCONTIG_VIEWS[view]
    x = torch.randn(shape, dtype=dtype, device=device)
    assert not fn(x).is_contiguous()
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, (3, 2)], views={0: fn}, kind="pool")


@pytest.mark.parametrize("out", [(3, 4), 1])
def test_adaptive_avg_pool2d_channels_last(PF, out, device, any_dtype):
    x = torch.randn(2, 5, 7, 6, dtype=any_dtype, device=device).contiguous(memory_format=torch.channels_last)
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, out], kind="pool")


@pytest.mark.parametrize("case", ["non_divisible", "larger_than_input", "global_int", "none_height"])
def test_adaptive_avg_pool2d_gradcheck(PF, case, device):
    (h, w), out = GRID[case]
    x = torch.randn(1, 2, h, w, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: PF.adaptive_avg_pool2d(t, out), (x,), eps=1e-6, atol=1e-6)


# --- the operators directly --------------------------------------------------


@pytest.mark.parametrize("case", ["non_divisible", "larger_than_input", "identity", "global_pair"])
def test_adaptive_avg_pool2d_ops(ops, case, device, dtype):
    (h, w), out = GRID[case]
    out = list(out) if isinstance(out, tuple) else [out, out]
    x = torch.randn(2, 3, h, w, dtype=dtype, device=device)
    y = ops.adaptive_avg_pool2d(x, out)
    ref = torch.ops.aten._adaptive_avg_pool2d(x, out)
    assert y.is_contiguous() and y.dtype == dtype
    assert_close_scaled(y, ref, dtype, "pool")
    go = torch.randn_like(y)
    gi = ops.adaptive_avg_pool2d_backward(go, x)
    ref_gi = torch.ops.aten._adaptive_avg_pool2d_backward(go, x)
    assert gi.shape == x.shape and gi.dtype == dtype
    assert_close_scaled(gi, ref_gi, dtype, "pool")


def test_adaptive_avg_pool2d_grad_output_layouts(PF, device, dtype):
    x = torch.randn(2, 3, 7, 6, dtype=dtype, device=device)
    check_grad_output_layouts(
        lambda x: PF.adaptive_avg_pool2d(x, (3, 4)), lambda x: F.adaptive_avg_pool2d(x, (3, 4)), [x], kind="pool"
    )


def test_adaptive_avg_pool2d_expanded_input(PF, device, dtype):
    base = torch.randn(1, 3, 1, 6, dtype=dtype, device=device)
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [base, (2, 4)], kind="pool",
                        views={0: lambda t: t.expand(2, 3, 5, 6)})
