"""pycnn.functional.batch_norm / torch.ops.pycnn.batch_norm* against native batch normalisation,
on the shapes and parameters of samples.py (which test_opcheck.py draws from too)."""

import pytest
import torch
import torch.nn.functional as F

import pycnn.functional as P

from conftest import NONCONTIG_VIEWS, assert_close_scaled, check_grad_output_layouts, compare_with_native
from samples import BATCH_NORM_SHAPES, batch_norm_affine, batch_norm_args, batch_norm_backward_args, batch_norm_stats

SHAPES = BATCH_NORM_SHAPES
_stats = batch_norm_stats
_affine = batch_norm_affine


def _check_running(cmp, dtype):
    for i, name in ((1, "running_mean"), (2, "running_var")):
        p, n = cmp.pycnn_args[i], cmp.native_args[i]
        if p is None:
            continue
        assert p.dtype == dtype
        assert_close_scaled(p, n, dtype, "norm", msg=name)


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("running", [True, False], ids=["stats", "nostats"])
def test_batch_norm_training(PF, rank, affine, running, device, any_dtype):
    shape = SHAPES[rank]
    c = shape[1]
    x = torch.randn(shape, dtype=any_dtype, device=device) * 2 + 0.5
    rm, rv = _stats(c, any_dtype, device) if running else (None, None)
    w, b = _affine(c, any_dtype, device, affine)
    cmp = compare_with_native(
        PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, True, 0.1, 1e-5], grad=[0, 3, 4], kind="norm"
    )
    _check_running(cmp, any_dtype)
    if running:
        # the statistics did change
        assert not torch.equal(cmp.pycnn_args[1], rm)


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("affine", ["both", "none"])
def test_batch_norm_eval(PF, rank, affine, device, any_dtype):
    shape = SHAPES[rank]
    c = shape[1]
    x = torch.randn(shape, dtype=any_dtype, device=device)
    rm, rv = _stats(c, any_dtype, device)
    w, b = _affine(c, any_dtype, device, affine)
    cmp = compare_with_native(
        PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, False, 0.1, 1e-5], grad=[0, 3, 4], kind="norm"
    )
    # eval never changes the running statistics
    assert torch.equal(cmp.pycnn_args[1], rm) and torch.equal(cmp.pycnn_args[2], rv)


def test_batch_norm_defaults_and_keywords(PF, device, dtype):
    x = torch.randn(4, 3, 5, 5, dtype=dtype, device=device)
    rm, rv = _stats(3, dtype, device)
    # defaults: weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
    compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv], grad=[0], kind="norm")
    w, b = _affine(3, dtype, device, "both")
    cmp = compare_with_native(
        PF.batch_norm, F.batch_norm, [x, rm, rv],
        dict(weight=w, bias=b, training=True, momentum=0.3, eps=1e-3), grad=[0], kind="norm",
    )
    _check_running(cmp, dtype)


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0])
def test_batch_norm_running_stats_several_steps(PF, rank, momentum, device, dtype):
    shape = SHAPES[rank]
    c = shape[1]
    rm_p, rv_p = torch.zeros(c, dtype=dtype, device=device), torch.ones(c, dtype=dtype, device=device)
    rm_n, rv_n = rm_p.clone(), rv_p.clone()
    w, b = _affine(c, dtype, device, "both")
    for step in range(4):
        x = torch.randn(shape, dtype=dtype, device=device) * (step + 1) + step
        y_p = PF.batch_norm(x, rm_p, rv_p, w, b, True, momentum, 1e-5)
        y_n = F.batch_norm(x, rm_n, rv_n, w, b, True, momentum, 1e-5)
        assert_close_scaled(y_p, y_n, dtype, "norm", msg=f"output at step {step}")
        assert_close_scaled(rm_p, rm_n, dtype, "norm", msg=f"running_mean at step {step}")
        # running_var uses the unbiased batch variance, as native
        assert_close_scaled(rv_p, rv_n, dtype, "norm", msg=f"running_var at step {step}")
    # then eval with the accumulated statistics
    x = torch.randn(shape, dtype=dtype, device=device)
    assert_close_scaled(PF.batch_norm(x, rm_p, rv_p, w, b), F.batch_norm(x, rm_n, rv_n, w, b), dtype, "norm")


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
def test_batch_norm_eps(PF, eps, device, dtype):
    x = torch.randn(4, 3, 4, 4, dtype=dtype, device=device) * 0.01
    for training in (True, False):
        rm, rv = _stats(3, dtype, device)
        cmp = compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv, None, None, training, 0.1, eps],
                                  grad=[0], kind="norm")
        _check_running(cmp, dtype)


def test_batch_norm_constant_channel(PF, device, dtype):
    # zero batch variance: the output is (x - mean) * rsqrt(eps) = 0 + bias
    x = torch.randn(4, 3, 3, 3, dtype=dtype, device=device)
    x[:, 1] = 2.5
    w, b = _affine(3, dtype, device, "both")
    rm, rv = _stats(3, dtype, device)
    cmp = compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, True], grad=[0, 3, 4], kind="norm")
    _check_running(cmp, dtype)


def test_batch_norm_batch_one(PF, device, dtype):
    x = torch.randn(1, 3, 4, 5, dtype=dtype, device=device)
    rm, rv = _stats(3, dtype, device)
    w, b = _affine(3, dtype, device, "both")
    cmp = compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, True], grad=[0, 3, 4], kind="norm")
    _check_running(cmp, dtype)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1)])
def test_batch_norm_single_value_per_channel(PF, shape, device):
    x = torch.randn(shape, device=device)
    rm, rv = _stats(3, torch.float32, device)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        PF.batch_norm(x, rm, rv, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        PF.batch_norm(x, None, None, training=True)
    # eval mode is fine with a single value
    compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv], grad=[0], kind="norm")


def test_batch_norm_batch_zero_eval(PF, device, dtype):
    x = torch.randn(0, 3, 4, 4, dtype=dtype, device=device)
    rm, rv = _stats(3, dtype, device)
    w, b = _affine(3, dtype, device, "both")
    cmp = compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, False], grad=[0, 3, 4], kind="norm")
    assert cmp.pycnn_out.shape == x.shape
    assert cmp.pycnn_grads[0].shape == x.shape
    assert cmp.pycnn_grads[3].shape == (3,) and cmp.pycnn_grads[4].shape == (3,)


def test_batch_norm_batch_zero_training(PF, device, dtype):
    # native: empty output, running statistics left unchanged
    x = torch.randn(0, 3, 4, 4, dtype=dtype, device=device)
    rm, rv = _stats(3, dtype, device)
    rm0, rv0 = rm.clone(), rv.clone()
    y = PF.batch_norm(x, rm, rv, None, None, True)
    assert y.shape == x.shape
    torch.testing.assert_close(rm, rm0)
    torch.testing.assert_close(rv, rv0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_empty_1d_batch(PF, training, device, dtype):
    # native returns an empty result for an empty 1-D input; a non-empty one is an error
    x = torch.randn(0, dtype=dtype, device=device, requires_grad=True)
    rm, rv = torch.zeros(0, dtype=dtype, device=device), torch.ones(0, dtype=dtype, device=device)
    y, expected = PF.batch_norm(x, rm, rv, training=training), F.batch_norm(x, rm, rv, training=training)
    assert y.shape == expected.shape == (0,)
    y.sum().backward()
    assert x.grad.shape == (0,)
    with pytest.raises(ValueError, match=r"expected input of rank >= 2"):
        PF.batch_norm(torch.randn(5, dtype=dtype, device=device), rm, rv, training=training)


BN_NONCONTIG_VIEWS = {
    **NONCONTIG_VIEWS,
    "transposed_2d": (lambda t: t.t(), (4, 5)),
    "transposed_3d": (lambda t: t.transpose(0, 2)[:, :, :], (5, 3, 4)),
}


@pytest.mark.parametrize("view", list(BN_NONCONTIG_VIEWS), ids=list(BN_NONCONTIG_VIEWS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_noncontiguous(PF, view, training, device, dtype):
    fn, shape = BN_NONCONTIG_VIEWS[view]
    x = torch.randn(shape, dtype=dtype, device=device)
    assert not fn(x).is_contiguous()
    c = fn(x).shape[1]
    rm, rv = _stats(c, dtype, device)
    w, b = _affine(c, dtype, device, "both")
    cmp = compare_with_native(
        PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, training], grad=[0, 3, 4], views={0: fn}, kind="norm"
    )
    _check_running(cmp, dtype)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_channels_last(PF, training, device, any_dtype):
    x = torch.randn(3, 5, 4, 6, dtype=any_dtype, device=device).contiguous(memory_format=torch.channels_last)
    rm, rv = _stats(5, any_dtype, device)
    w, b = _affine(5, any_dtype, device, "both")
    cmp = compare_with_native(PF.batch_norm, F.batch_norm, [x, rm, rv, w, b, training], grad=[0, 3, 4], kind="norm")
    _check_running(cmp, any_dtype)


def test_batch_norm_noncontiguous_parameters(PF, device, dtype):
    x = torch.randn(3, 4, 5, 5, dtype=dtype, device=device)
    rm_full, rv_full = _stats(8, dtype, device)
    w, b = _affine(8, dtype, device, "both")
    p_rm, p_rv = rm_full.clone(), rv_full.clone()
    n_rm, n_rv = rm_full.clone(), rv_full.clone()
    y_p = PF.batch_norm(x, p_rm[::2], p_rv[::2], w[::2], b[1::2], True, 0.2)
    y_n = F.batch_norm(x, n_rm[::2], n_rv[::2], w[::2], b[1::2], True, 0.2)
    assert_close_scaled(y_p, y_n, dtype, "norm")
    # the in-place update must write through the strided views
    assert_close_scaled(p_rm, n_rm, dtype, "norm", msg="running_mean")
    assert_close_scaled(p_rv, n_rv, dtype, "norm", msg="running_var")


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_gradcheck(PF, rank, training, device):
    shape = SHAPES[rank]
    c = shape[1]
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(c, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(c, dtype=torch.float64, device=device, requires_grad=True)
    rm, rv = _stats(c, torch.float64, device)

    def fn(x, w, b):
        # fresh copies: the running statistics are mutated in training mode
        return PF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6)

    def fn_nostats(x, w, b):
        return PF.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn_nostats, (x, w, b), eps=1e-6, atol=1e-6)


# --- the operators directly --------------------------------------------------


@pytest.mark.parametrize("rank", list(SHAPES))
def test_batch_norm_op_training(ops, rank, device, dtype):
    # The operator is functional: it returns the updated running statistics
    # (new_running_mean, new_running_var) and leaves its arguments alone.
    shape = SHAPES[rank]
    c = shape[1]
    x = torch.randn(shape, dtype=dtype, device=device) * 3 + 1
    rm, rv = _stats(c, dtype, device)
    w, b = _affine(c, dtype, device, "both")
    rm0, rv0 = rm.clone(), rv.clone()
    rm_n, rv_n = rm.clone(), rv.clone()
    out, save_mean, save_invstd, new_rm, new_rv = ops.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)
    ref = F.batch_norm(x, rm_n, rv_n, w, b, True, 0.1, 1e-5)
    assert out.is_contiguous() and out.shape == x.shape
    assert_close_scaled(out, ref, dtype, "norm")
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0), "the functional operator mutated its arguments"
    assert new_rm.shape == (c,) and new_rv.shape == (c,)
    assert_close_scaled(new_rm, rm_n, dtype, "norm", msg="new_running_mean")
    assert_close_scaled(new_rv, rv_n, dtype, "norm", msg="new_running_var")
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dims)
    invstd = torch.rsqrt(x.var(dims, unbiased=False) + 1e-5)
    assert save_mean.shape == (c,) and save_invstd.shape == (c,)
    assert_close_scaled(save_mean, mean, dtype, "norm", msg="save_mean")
    assert_close_scaled(save_invstd, invstd, dtype, "norm", msg="save_invstd")


def test_batch_norm_op_eval(ops, device, dtype):
    x = torch.randn(3, 4, 5, 5, dtype=dtype, device=device)
    rm, rv = _stats(4, dtype, device)
    w, b = _affine(4, dtype, device, "both")
    out, save_mean, save_invstd, new_rm, new_rv = ops.batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5)
    assert_close_scaled(out, F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5), dtype, "norm")
    # eval: the running statistics are the statistics used, and stay unchanged
    assert_close_scaled(new_rm, rm, dtype, "norm", msg="new_running_mean")
    assert_close_scaled(new_rv, rv, dtype, "norm", msg="new_running_var")
    assert_close_scaled(save_mean, rm, dtype, "norm", msg="save_mean")
    assert_close_scaled(save_invstd, torch.rsqrt(rv + 1e-5), dtype, "norm", msg="save_invstd")


def test_batch_norm_op_without_running_stats(ops, device, dtype):
    # No running statistics: batch statistics, also with training=False, and
    # empty (0,) new_running_mean / new_running_var.
    x = torch.randn(3, 4, 5, 5, dtype=dtype, device=device)
    w, b = _affine(4, dtype, device, "both")
    ref = F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
    for training in (True, False):
        out, _, _, new_rm, new_rv = ops.batch_norm(x, w, b, None, None, training, 0.1, 1e-5)
        assert_close_scaled(out, ref, dtype, "norm")
        assert new_rm.shape == (0,) and new_rv.shape == (0,)


def test_module_eval_without_running_stats_uses_batch_stats(PN, device, dtype):
    bn_p = PN.BatchNorm2d(4, track_running_stats=False).to(device=device, dtype=dtype).eval()
    bn_n = torch.nn.BatchNorm2d(4, track_running_stats=False).to(device=device, dtype=dtype).eval()
    x = torch.randn(3, 4, 5, 5, dtype=dtype, device=device) * 2 + 1
    compare_with_native(bn_p, bn_n, [x], kind="norm")


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_backward_op(ops, rank, training, affine, device, dtype):
    c = SHAPES[rank][1]
    x, w, _, rm, rv, *_ = args = batch_norm_args(rank, device, dtype, affine="weight" if affine else "none",
                                                 training=training)
    go, *_, used_batch_stats = backward_args = batch_norm_backward_args(args)
    assert used_batch_stats == training
    gi, gw, gb = ops.batch_norm_backward(*backward_args)

    xl = x.clone().requires_grad_(True)
    wl = (w if affine else torch.ones(c, dtype=dtype, device=device)).clone().requires_grad_(True)
    bl = torch.zeros(c, dtype=dtype, device=device, requires_grad=True)
    ref = F.batch_norm(xl, rm.clone(), rv.clone(), wl, bl, training, 0.1, 1e-5)
    rgi, rgw, rgb = torch.autograd.grad(ref, (xl, wl, bl), go)
    assert gi.shape == x.shape
    assert_close_scaled(gi, rgi, dtype, "norm", msg="grad_input")
    if affine:
        assert_close_scaled(gw, rgw, dtype, "norm", msg="grad_weight")
        assert_close_scaled(gb, rgb, dtype, "norm", msg="grad_bias")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_grad_output_layouts(PF, training, device, dtype):
    x = torch.randn(3, 4, 5, 6, dtype=dtype, device=device)
    w, b = _affine(4, dtype, device, "both")
    rm, rv = _stats(4, dtype, device)
    check_grad_output_layouts(
        lambda x, w, b: PF.batch_norm(x, rm.clone(), rv.clone(), w, b, training),
        lambda x, w, b: F.batch_norm(x, rm.clone(), rv.clone(), w, b, training),
        [x, w, b], kind="norm",
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_expanded_input(PF, training, device, dtype):
    base = torch.randn(3, 4, 1, 6, dtype=dtype, device=device)
    rm, rv = _stats(4, dtype, device)
    cmp = compare_with_native(PF.batch_norm, F.batch_norm, [base, rm, rv, None, None, training], grad=[0],
                              kind="norm", views={0: lambda t: t.expand(3, 4, 5, 6)})
    _check_running(cmp, dtype)


def test_functional_eval_without_running_stats_raises_like_native(PF, device):
    x = torch.randn(3, 4, 5, 5, device=device)
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        PF.batch_norm(x, None, None, training=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_mixed_precision(PF, dtype, training, device):
    """A float16 / bfloat16 input with float32 parameters and running statistics
    (what mixed-precision training keeps), against native: output in the
    input's dtype, statistics and parameter gradients in float32."""
    results = []
    for fn in (PF.batch_norm, F.batch_norm):
        torch.manual_seed(0)
        x = torch.randn(4, 3, 5, 5, device=device).to(dtype).requires_grad_()
        w = torch.randn(3, device=device, requires_grad=True)
        b = torch.randn(3, device=device, requires_grad=True)
        rm, rv = torch.randn(3, device=device), torch.rand(3, device=device) + 0.5
        y = fn(x, rm, rv, w, b, training=training)
        y.backward(torch.linspace(-1, 1, y.numel(), device=device).view(y.shape).to(dtype))
        results.append((y, rm, rv, x.grad, w.grad, b.grad))
    for name, ours, native in zip(["output", "running_mean", "running_var", "grad_input", "grad_weight", "grad_bias"],
                                  *results):
        assert ours.dtype == native.dtype, name
        assert_close_scaled(ours, native, dtype, "norm", msg=name)


def test_running_statistics_that_require_grad_are_updated_like_plain_ones():
    """pycnn.functional.batch_norm writes the new statistics in place; running statistics that
    require grad (leaves, which grad mode may not write) go through torch.no_grad(), others not:
    both give the same update, and nothing is recorded."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    plain = (torch.randn(3, generator=gen, dtype=torch.float64), torch.rand(3, generator=gen, dtype=torch.float64))
    leaves = tuple(t.clone().requires_grad_() for t in plain)
    for running_mean, running_var in (plain, leaves):
        P.batch_norm(x, running_mean, running_var, training=True, momentum=0.3).sum().backward()
    torch.testing.assert_close(leaves[0].detach(), plain[0])
    torch.testing.assert_close(leaves[1].detach(), plain[1])
    assert leaves[0].grad is None and leaves[0].grad_fn is None
    # and the update is native's
    mean, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    native = mean.clone(), var.clone()
    P.batch_norm(x, mean, var, training=True, momentum=0.3)
    F.batch_norm(x, *native, training=True, momentum=0.3)
    torch.testing.assert_close((mean, var), native)
