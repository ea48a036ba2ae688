"""pycnn.functional.conv2d / torch.ops.pycnn.corr2d* against torch.nn.functional.conv2d,
on the cases of samples.CORR2D (which test_opcheck.py draws from too)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import NONCONTIG_VIEWS, assert_close_scaled, check_grad_output_layouts, compare_with_native
from samples import CORR2D, corr2d_backward_input_args, corr2d_backward_weight_args, corr2d_case, corr2d_tensors


@pytest.mark.parametrize("case", list(CORR2D), ids=list(CORR2D))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_grid(PF, case, bias, device, any_dtype):
    (x, wt, b), window = corr2d_case(case, any_dtype, device, bias)
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, *window])


@pytest.mark.parametrize("case", ["odd_sizes", "groups_3", "asymmetric"])
def test_conv2d_keyword_arguments(PF, case, device):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = CORR2D[case]
    (x, wt, b), _ = corr2d_case(case, torch.float64, device)
    kwargs = dict(bias=b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    torch.testing.assert_close(PF.conv2d(x, wt, **kwargs), F.conv2d(x, wt, **kwargs), rtol=1e-10, atol=1e-10)
    # Defaults: bias=None, stride=1, padding=0, dilation=1, groups=1.
    wt1 = torch.randn(o, c, *kernel, dtype=torch.float64, device=device)
    torch.testing.assert_close(PF.conv2d(x, wt1), F.conv2d(x, wt1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kernel,dilation",
    [((3, 3), 1), ((2, 2), 1), ((2, 4), 1), ((3, 2), (2, 3)), ((1, 1), 1), ((4, 3), 2)],
    ids=["3x3", "2x2_even", "2x4_even", "dilated_asym", "1x1", "4x3_dil2"],
)
def test_conv2d_padding_same(PF, kernel, dilation, device, dtype):
    x = torch.randn(2, 3, 7, 8, dtype=dtype, device=device)
    wt = torch.randn(4, 3, *kernel, dtype=dtype, device=device)
    b = torch.randn(4, dtype=dtype, device=device)
    cmp = compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, "same", dilation])
    assert cmp.pycnn_out.shape[-2:] == x.shape[-2:]


def test_conv2d_padding_valid(PF, device, dtype):
    x = torch.randn(2, 3, 7, 8, dtype=dtype, device=device)
    wt = torch.randn(4, 3, 3, 2, dtype=dtype, device=device)
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, None, 2, "valid"])
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, None], dict(padding="valid", stride=(1, 2)))


def test_conv2d_padding_same_strided_rejected(PF, device):
    x = torch.randn(1, 2, 5, 5, device=device)
    wt = torch.randn(2, 2, 3, 3, device=device)
    with pytest.raises((RuntimeError, ValueError), match="same"):
        PF.conv2d(x, wt, stride=2, padding="same")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv2d_batch_zero(PF, bias, device, dtype):
    x, wt, b = corr2d_tensors(0, 3, 6, 5, 4, (3, 3), 1, dtype, device, bias)
    cmp = compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, 1])
    assert cmp.pycnn_out.shape == (0, 4, 6, 5)
    assert cmp.pycnn_grads[0].shape == x.shape
    assert cmp.pycnn_grads[1].shape == wt.shape
    assert torch.count_nonzero(cmp.pycnn_grads[1]) == 0
    if bias:
        assert torch.count_nonzero(cmp.pycnn_grads[2]) == 0


@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_unbatched(PF, groups, device, any_dtype):
    x = torch.randn(4, 7, 6, dtype=any_dtype, device=device)
    wt = torch.randn(6, 4 // groups, 3, 2, dtype=any_dtype, device=device)
    b = torch.randn(6, dtype=any_dtype, device=device)
    cmp = compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, (2, 1), 1, 1, groups])
    assert cmp.pycnn_out.dim() == 3



@pytest.mark.parametrize("view", list(NONCONTIG_VIEWS), ids=list(NONCONTIG_VIEWS))
def test_conv2d_noncontiguous_input(PF, view, device, dtype):
    fn, shape = NONCONTIG_VIEWS[view]
    x = torch.randn(*shape, dtype=dtype, device=device)
    assert not fn(x).is_contiguous()
    c = fn(x).shape[1]
    wt = torch.randn(4, c, 3, 3, dtype=dtype, device=device)
    b = torch.randn(4, dtype=dtype, device=device)
    cmp = compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, 1], views={0: fn})
    assert cmp.pycnn_out.is_contiguous() or cmp.pycnn_out.is_contiguous(memory_format=torch.channels_last)


def test_conv2d_noncontiguous_weight(PF, device, dtype):
    x = torch.randn(2, 3, 7, 7, dtype=dtype, device=device)
    wt = torch.randn(4, 3, 3, 3, dtype=dtype, device=device)
    b = torch.randn(8, dtype=dtype, device=device)
    compare_with_native(
        PF.conv2d,
        F.conv2d,
        [x, wt, b, 1, 1],
        views={1: lambda t: t.transpose(2, 3), 2: lambda t: t[::2]},
    )


@pytest.mark.parametrize("which", ["input", "weight", "both"])
def test_conv2d_channels_last(PF, which, device, dtype):
    x = torch.randn(2, 4, 7, 6, dtype=dtype, device=device)
    wt = torch.randn(5, 4, 3, 3, dtype=dtype, device=device)
    if which in ("input", "both"):
        x = x.contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    if which in ("weight", "both"):
        wt = wt.contiguous(memory_format=torch.channels_last)
    b = torch.randn(5, dtype=dtype, device=device)
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, (2, 1), 1])


def test_conv2d_only_some_inputs_require_grad(PF, device, dtype):
    x, wt, b = corr2d_tensors(2, 3, 6, 6, 4, (3, 3), 1, dtype, device)
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, 1], grad=[0])
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, 1], grad=[1])
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, 1], grad=[2])
    compare_with_native(PF.conv2d, F.conv2d, [x, wt, b, 1, 1], grad=[1, 2])


def test_conv2d_no_grad_output_has_no_grad_fn(PF, device):
    x, wt, b = corr2d_tensors(1, 2, 5, 5, 3, (3, 3), 1, torch.float32, device)
    with torch.no_grad():
        y = PF.conv2d(x.requires_grad_(), wt, b)
    assert y.grad_fn is None and not y.requires_grad


def test_conv2d_output_follows_the_input_memory_format_op(ops, device):
    # as native: channels_last in, channels_last out (test_memory_format.py covers every operator)
    x = torch.randn(2, 3, 7, 6, device=device).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(4, 3, 3, 3, device=device)
    y, native = ops.corr2d(x, wt, None, [1, 1], [1, 1], [1, 1], 1), F.conv2d(x, wt, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last) and native.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, native, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "case", ["odd_sizes_padded", "groups_3", "asymmetric", "dilation_padding_stride", "single_pixel_padded"]
)
def test_conv2d_gradcheck(ops, PF, case, device):
    n, c, h, w, o, kernel, stride, padding, dilation, groups = CORR2D[case]
    (x, wt, b), _ = corr2d_case(case, torch.float64, device, batch=1, height=min(h, 6), width=min(w, 6))
    for t in (x, wt, b):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, wt, b: PF.conv2d(x, wt, b, stride, padding, dilation, groups), (x, wt, b), eps=1e-6, atol=1e-6
    )

    def op(x, wt, b):
        s = stride if isinstance(stride, tuple) else (stride, stride)
        p = padding if isinstance(padding, tuple) else (padding, padding)
        d = dilation if isinstance(dilation, tuple) else (dilation, dilation)
        return ops.corr2d(x, wt, b, list(s), list(p), list(d), groups)

    assert torch.autograd.gradcheck(op, (x, wt, b), eps=1e-6, atol=1e-6, fast_mode=True)


# --- the backward operators directly -----------------------------------------


@pytest.mark.parametrize(
    "case", ["odd_sizes", "stride_gt_kernel_padded", "dilation_padding_stride", "asymmetric", "groups_3",
             "groups_6_depthwise_multiplier", "kernel_eq_input"]
)
def test_corr2d_backward_ops(ops, case, device, dtype):
    o = CORR2D[case][4]
    go, wt, input_size, s, p, d, groups = args = corr2d_backward_input_args(case, device, dtype)
    gi = ops.corr2d_backward_input(*args)
    gi_ref = torch.nn.grad.conv2d_input(input_size, wt, go, s, p, d, groups)
    assert list(gi.shape) == input_size and gi.dtype == dtype and gi.is_contiguous()
    assert_close_scaled(gi, gi_ref, dtype, "conv", msg="corr2d_backward_input")

    go, x, weight_size, s, p, d, groups = args = corr2d_backward_weight_args(case, device, dtype)
    gw, gb = ops.corr2d_backward_weight(*args)
    gw_ref = torch.nn.grad.conv2d_weight(x, weight_size, go, s, p, d, groups)
    assert list(gw.shape) == weight_size and gw.dtype == dtype
    assert_close_scaled(gw, gw_ref, dtype, "conv", msg="corr2d_backward_weight (weight)")
    assert gb.shape == (o,)
    assert_close_scaled(gb, go.sum((0, 2, 3)), dtype, "conv", msg="corr2d_backward_weight (bias)")


def test_corr2d_backward_input_unread_positions(ops, device):
    # With stride 3 and kernel 2 some input rows/cols are not read by any
    # window: their gradient must be exactly zero.
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, device=device)
    wt = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=device)
    go = torch.randn(1, 3, 3, 3, dtype=torch.float64, device=device)
    gi = ops.corr2d_backward_input(go, wt, [1, 2, 8, 8], [3, 3], [0, 0], [1, 1], 1)
    assert gi.shape == (1, 2, 8, 8)
    # windows start at 0, 3, 6 and cover rows/cols {0, 1, 3, 4, 6, 7}
    for r in (2, 5):
        assert torch.count_nonzero(gi[:, :, r]) == 0 and torch.count_nonzero(gi[:, :, :, r]) == 0
    torch.testing.assert_close(gi, torch.nn.grad.conv2d_input(x.shape, wt, go, 3), rtol=1e-10, atol=1e-10)


def test_conv2d_grad_output_layouts(PF, device, dtype):
    x = torch.randn(2, 3, 7, 6, dtype=dtype, device=device)
    w = torch.randn(4, 3, 3, 2, dtype=dtype, device=device)
    b = torch.randn(4, dtype=dtype, device=device)
    check_grad_output_layouts(
        lambda x, w, b: PF.conv2d(x, w, b, (2, 1), 1), lambda x, w, b: F.conv2d(x, w, b, (2, 1), 1), [x, w, b]
    )


def test_conv2d_expanded_input(PF, device, dtype):
    base = torch.randn(1, 3, 1, 6, dtype=dtype, device=device)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, device=device)
    compare_with_native(PF.conv2d, F.conv2d, [base, w, None, 1, 1], views={0: lambda t: t.expand(2, 3, 5, 6)})


# --- corr2d_backward_weight's output_mask ---------------------------------------


@pytest.mark.parametrize("mask", [[True, True], [True, False], [False, True], [False, False]],
                         ids=["both", "weight_only", "bias_only", "neither"])
def test_corr2d_backward_weight_output_mask(ops, mask, device, dtype):
    # An output not asked for is an empty (0,) tensor; the ones asked for are
    # exactly what the unmasked call gives.
    x = torch.randn(3, 4, 7, 6, dtype=dtype, device=device)
    go = torch.randn(3, 6, 4, 6, dtype=dtype, device=device)
    conv = ([2, 1], [1, 1], [1, 1], 2)
    gw_all, gb_all = ops.corr2d_backward_weight(go, x, [6, 2, 3, 3], *conv)
    gw, gb = ops.corr2d_backward_weight(go, x, [6, 2, 3, 3], *conv, mask)
    for got, full, wanted in ((gw, gw_all, mask[0]), (gb, gb_all, mask[1])):
        assert got.dtype == dtype and got.device == full.device
        if wanted:
            torch.testing.assert_close(got, full, rtol=0, atol=0)
        else:
            assert got.shape == (0,)


def _backward_weight_masks(fn):
    """The output_mask of every corr2d_backward_weight call that fn() makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    masks = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.pycnn.corr2d_backward_weight.default:
                # An argument equal to its default ([True, True]) reaches the mode left out.
                masks.append([bool(m) for m in args[7]] if len(args) > 7 else [True, True])
            return func(*args, **(kwargs or {}))

    with Log():
        fn()
    return masks


@pytest.mark.parametrize("needs", [(True, True, True), (False, True, False), (False, False, True),
                                   (True, False, False), (False, True, True)],
                         ids=["all", "weight_only", "bias_only", "input_only", "weight_and_bias"])
def test_corr2d_backward_computes_only_the_needed_gradients(PF, needs, device):
    # autograd asks corr2d_backward_weight only for the gradients it needs,
    # and the gradients are those of native's.
    x = torch.randn(2, 4, 8, 7, dtype=torch.float64, device=device, requires_grad=needs[0])
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=needs[1])
    b = torch.randn(6, dtype=torch.float64, device=device, requires_grad=needs[2])
    args = dict(stride=(1, 2), padding=1, groups=2)
    leaves = [t for t in (x, w, b) if t.requires_grad]
    grads = []
    masks = _backward_weight_masks(
        lambda: grads.extend(torch.autograd.grad(PF.conv2d(x, w, b, **args).square().sum(), leaves)))
    expected_mask = [needs[1], needs[2]]
    assert masks == ([expected_mask] if any(expected_mask) else [])
    native = torch.autograd.grad(F.conv2d(x, w, b, **args).square().sum(), leaves)
    for got, ref in zip(grads, native):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_corr2d_double_backward_asks_only_for_grad_weight(PF, device):
    # corr2d_backward_input's derivative in the weight needs grad_weight only.
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, device=device, requires_grad=True)

    def second_order():
        (gx,) = torch.autograd.grad(PF.conv2d(x, w, padding=1).sum(), x, create_graph=True)
        torch.autograd.grad(gx.square().sum(), w)

    logged = _backward_weight_masks(second_order)
    assert [True, False] in logged


@pytest.mark.parametrize("mask", [[True, False], [False, True]], ids=["weight_only", "bias_only"])
def test_corr2d_backward_weight_masked_derivatives(ops, mask, device):
    # The masked operator's own derivatives (reverse and forward mode) are
    # those of the outputs it computes.
    go = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    conv = ([1, 1], [1, 1], [1, 1], 1)

    def fn(go, x):
        gw, gb = ops.corr2d_backward_weight(go, x, [4, 3, 3, 3], *conv, mask)
        return gw if mask[0] else gb

    torch.autograd.gradcheck(fn, (go, x))
    torch.autograd.gradgradcheck(fn, (go, x))
    tangents = (torch.randn_like(go), torch.randn_like(x))
    _, jvp = torch.func.jvp(lambda go, x: fn(go, x), (go.detach(), x.detach()), tangents)
    _, vjp_fn = torch.func.vjp(lambda go, x: fn(go, x), go.detach(), x.detach())
    # <J t, J t> two ways: jvp against vjp of the same cotangent.
    vjp = vjp_fn(jvp)
    assert torch.allclose((jvp * jvp).sum(), sum((v * t).sum() for v, t in zip(vjp, tangents)), rtol=1e-9)


def test_vmap_corr2d_backward_weight_masked(ops, device):
    gy = torch.randn(3, 2, 6, 4, 4, dtype=torch.float64, device=device)
    x = torch.randn(3, 2, 4, 7, 6, dtype=torch.float64, device=device)
    conv = ([2, 1], [1, 0], [1, 2], 2)
    for mask in ([True, False], [False, True]):
        gw, gb = torch.vmap(lambda gy, x: ops.corr2d_backward_weight(gy, x, [6, 2, 3, 2], *conv, mask))(gy, x)
        loop = [ops.corr2d_backward_weight(gy[i], x[i], [6, 2, 3, 2], *conv, mask) for i in range(3)]
        for k, got in enumerate((gw, gb)):
            if mask[k]:
                torch.testing.assert_close(got, torch.stack([r[k] for r in loop]), rtol=1e-12, atol=1e-12)
            else:
                assert got.numel() == 0
