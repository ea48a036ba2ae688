"""pycnn.nn modules against their torch.nn counterparts."""

import pytest
import torch

from conftest import assert_close_scaled

# name -> (module class name, args, kwargs, input shape, tolerance kind)
MODULES = {
    "conv_basic": ("Conv2d", (3, 6, 3), {}, (2, 3, 7, 8), "conv"),
    "conv_full": (
        "Conv2d",
        (4, 6, (3, 2)),
        dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=False),
        (2, 4, 9, 8),
        "conv",
    ),
    "conv_depthwise_same": ("Conv2d", (6, 6, 3), dict(padding="same", groups=6), (3, 6, 7, 7), "conv"),
    "conv_same_even": ("Conv2d", (3, 4, (2, 4)), dict(padding="same", dilation=(2, 1)), (2, 3, 7, 8), "conv"),
    "conv_valid_1x1": ("Conv2d", (3, 4, 1), dict(padding="valid", stride=2), (2, 3, 7, 8), "conv"),
    "maxpool": ("MaxPool2d", (3, 2, 1), dict(ceil_mode=True), (2, 3, 9, 8), "pool"),
    "maxpool_dilated": ("MaxPool2d", ((3, 2),), dict(stride=(2, 1), dilation=(1, 2)), (2, 3, 9, 8), "pool"),
    "avgpool": ("AvgPool2d", (3, 2, 1), dict(count_include_pad=False), (2, 3, 9, 8), "pool"),
    "avgpool_divisor": ("AvgPool2d", (2,), dict(ceil_mode=True, divisor_override=3), (2, 3, 7, 8), "pool"),
    "adaptive": ("AdaptiveAvgPool2d", ((None, 3),), {}, (2, 3, 9, 8), "pool"),
    "adaptive_global": ("AdaptiveAvgPool2d", (1,), {}, (2, 3, 9, 8), "pool"),
    "bn1d_2d": ("BatchNorm1d", (4,), {}, (6, 4), "norm"),
    "bn1d_3d": ("BatchNorm1d", (4,), dict(eps=1e-3, momentum=0.3), (3, 4, 5), "norm"),
    "bn2d": ("BatchNorm2d", (4,), {}, (3, 4, 5, 5), "norm"),
    "bn2d_cma": ("BatchNorm2d", (4,), dict(momentum=None), (3, 4, 5, 5), "norm"),
    "bn2d_noaffine": ("BatchNorm2d", (4,), dict(affine=False), (3, 4, 5, 5), "norm"),
    "bn2d_notrack": ("BatchNorm2d", (4,), dict(track_running_stats=False), (3, 4, 5, 5), "norm"),
    "bn1d_bare": ("BatchNorm1d", (4,), dict(affine=False, track_running_stats=False), (3, 4, 5), "norm"),
}


def _pair(PN, name, device, dtype):
    cls, args, kwargs, shape, kind = MODULES[name]
    p = getattr(PN, cls)(*args, **kwargs).to(device=device, dtype=dtype)
    n = getattr(torch.nn, cls)(*args, **kwargs).to(device=device, dtype=dtype)
    return p, n, shape, kind


def _randomise(module):
    """Non-trivial values for every parameter and floating buffer."""
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            if "running_var" in name:
                t.copy_(torch.rand_like(t) + 0.5)
            else:
                t.copy_(torch.randn_like(t))


def _compare_modules(p, n, x, dtype, kind, steps=1):
    """Forward and backward of both modules on the same input; compares the
    output, the input gradient, every parameter gradient and every buffer."""
    for step in range(steps):
        xp = x.clone().requires_grad_(True)
        xn = x.clone().requires_grad_(True)
        yp, yn = p(xp), n(xn)
        if isinstance(yn, tuple):
            assert isinstance(yp, tuple) and len(yp) == len(yn)
            for a, b in zip(yp[1:], yn[1:]):
                assert torch.equal(a, b)
            yp, yn = yp[0], yn[0]
        assert yp.shape == yn.shape
        assert_close_scaled(yp, yn, dtype, kind, msg=f"output (step {step})")
        go = torch.randn_like(yn)
        p.zero_grad()
        n.zero_grad()
        yp.backward(go)
        yn.backward(go)
        assert_close_scaled(xp.grad, xn.grad, dtype, kind, msg=f"input grad (step {step})")
        pp, nn_ = dict(p.named_parameters()), dict(n.named_parameters())
        assert pp.keys() == nn_.keys()
        for k in nn_:
            assert pp[k].grad is not None, f"no gradient for parameter {k}"
            assert_close_scaled(pp[k].grad, nn_[k].grad, dtype, kind, msg=f"grad of {k} (step {step})")
        pb, nb = dict(p.named_buffers()), dict(n.named_buffers())
        assert pb.keys() == nb.keys()
        for k in nb:
            if nb[k].is_floating_point():
                assert_close_scaled(pb[k], nb[k], dtype, kind, msg=f"buffer {k} (step {step})")
            else:
                assert torch.equal(pb[k], nb[k]), f"buffer {k} (step {step}): {pb[k]} != {nb[k]}"
        x = torch.randn_like(x) * (step + 2) + step


@pytest.mark.parametrize("name", list(MODULES), ids=list(MODULES))
def test_state_dict_keys(PN, name, device, dtype):
    p, n, _, _ = _pair(PN, name, device, dtype)
    sp, sn = p.state_dict(), n.state_dict()
    assert list(sp.keys()) == list(sn.keys())
    for k in sn:
        assert sp[k].shape == sn[k].shape, k
        assert sp[k].dtype == sn[k].dtype, k
    assert [k for k, _ in p.named_parameters()] == [k for k, _ in n.named_parameters()]
    for k, t in p.named_parameters():
        assert isinstance(t, torch.nn.Parameter) and t.requires_grad


@pytest.mark.parametrize("name", list(MODULES), ids=list(MODULES))
@pytest.mark.parametrize("direction", ["torch_to_pycnn", "pycnn_to_torch"])
def test_load_and_compare(PN, name, direction, device, any_dtype):
    p, n, shape, kind = _pair(PN, name, device, any_dtype)
    if direction == "torch_to_pycnn":
        _randomise(n)
        p.load_state_dict(n.state_dict())
    else:
        _randomise(p)
        n.load_state_dict(p.state_dict())
    for k, v in n.state_dict().items():
        assert torch.equal(p.state_dict()[k], v), k
    x = torch.randn(shape, dtype=any_dtype, device=device)
    _compare_modules(p, n, x, any_dtype, kind)


@pytest.mark.parametrize("name", [k for k in MODULES if k.startswith("bn")])
def test_batch_norm_training_steps_then_eval(PN, name, device, dtype):
    p, n, shape, kind = _pair(PN, name, device, dtype)
    n.load_state_dict(p.state_dict())
    p.train()
    n.train()
    x = torch.randn(shape, dtype=dtype, device=device)
    _compare_modules(p, n, x, dtype, kind, steps=5)
    if n.track_running_stats:
        assert int(p.num_batches_tracked) == int(n.num_batches_tracked) == 5
        assert not torch.equal(p.running_mean, torch.zeros_like(p.running_mean))
    p.eval()
    n.eval()
    _compare_modules(p, n, torch.randn(shape, dtype=dtype, device=device) * 3, dtype, kind, steps=2)
    if n.track_running_stats:
        assert int(p.num_batches_tracked) == 5


def test_batch_norm_cumulative_moving_average(PN, device):
    # momentum=None: running_mean is the plain average of the batch means.
    bn = PN.BatchNorm1d(3, momentum=None, affine=False).to(device=device, dtype=torch.float64)
    means, vars_ = [], []
    for _ in range(4):
        x = torch.randn(8, 3, dtype=torch.float64, device=device) * 2 + 1
        bn(x)
        means.append(x.mean(0))
        vars_.append(x.var(0, unbiased=True))
    # the first update has factor 1/1, so the initial (0, 1) statistics drop out
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0), rtol=1e-10, atol=1e-10)
    assert int(bn.num_batches_tracked) == 4


def test_batch_norm_module_single_value_raises(PN, device):
    bn = PN.BatchNorm1d(3).to(device)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn(torch.randn(1, 3, device=device))
    bn.eval()
    assert bn(torch.randn(1, 3, device=device)).shape == (1, 3)


def test_batch_norm_eval_frozen_stats(PN, device, dtype):
    p = PN.BatchNorm2d(4).to(device=device, dtype=dtype)
    _randomise(p)
    p.eval()
    rm, rv = p.running_mean.clone(), p.running_var.clone()
    x = torch.randn(2, 4, 3, 3, dtype=dtype, device=device)
    y = p(x)
    assert torch.equal(p.running_mean, rm) and torch.equal(p.running_var, rv)
    ref = (x - rm[:, None, None]) / torch.sqrt(rv[:, None, None] + p.eps) * p.weight[:, None, None] + p.bias[:, None, None]
    assert_close_scaled(y, ref, dtype, "norm")


def test_maxpool_module_return_indices(PN, device, dtype):
    p = PN.MaxPool2d(2, return_indices=True)
    n = torch.nn.MaxPool2d(2, return_indices=True)
    x = torch.randn(2, 3, 6, 7, dtype=dtype, device=device)
    (yp, ip), (yn, in_) = p(x), n(x)
    assert torch.equal(yp, yn) and torch.equal(ip, in_)


def test_modules_in_sequential(PN, device, dtype):
    def build(lib):
        return torch.nn.Sequential(
            lib.Conv2d(3, 6, 3, padding=1),
            lib.BatchNorm2d(6),
            torch.nn.ReLU(),
            lib.MaxPool2d(2),
            lib.Conv2d(6, 6, 3, groups=3, padding="same"),
            lib.AvgPool2d(2, ceil_mode=True),
            lib.AdaptiveAvgPool2d(1),
        ).to(device=device, dtype=dtype)

    p, n = build(PN), build(torch.nn)
    _randomise(n)
    p.load_state_dict(n.state_dict())
    x = torch.randn(4, 3, 12, 11, dtype=dtype, device=device)
    _compare_modules(p, n, x, dtype, "conv", steps=2)
    p.eval()
    n.eval()
    _compare_modules(p, n, x, dtype, "conv", steps=1)


def test_conv_module_default_init_shapes(PN, device):
    m = PN.Conv2d(4, 6, (3, 2), groups=2)
    assert m.weight.shape == (6, 2, 3, 2) and m.bias.shape == (6,)
    # default init: finite, not constant
    assert torch.isfinite(m.weight).all() and m.weight.std() > 0
    assert PN.Conv2d(4, 6, 3, bias=False).bias is None


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv_module_padding_modes(PN, padding_mode, device, dtype):
    p = PN.Conv2d(3, 4, (3, 2), padding=(1, 1), padding_mode=padding_mode).to(device=device, dtype=dtype)
    n = torch.nn.Conv2d(3, 4, (3, 2), padding=(1, 1), padding_mode=padding_mode).to(device=device, dtype=dtype)
    n.load_state_dict(p.state_dict())
    _compare_modules(p, n, torch.randn(2, 3, 6, 7, dtype=dtype, device=device), dtype, "conv")


MODULE_OPS = {
    "conv_basic": "corr2d",
    "conv_same_even": "corr2d",
    "maxpool": "max_pool2d",
    "avgpool": "avg_pool2d",
    "adaptive": "adaptive_avg_pool2d",
    "bn1d_3d": "batch_norm",
    "bn2d_notrack": "batch_norm",
}


@pytest.mark.parametrize("name", list(MODULE_OPS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_modules_call_pycnn_operators(PN, name, training, device):
    # The modules must run pycnn's kernels (not inherit torch.nn's forward):
    # trace forward and backward and look for the pycnn operators.
    from torch.fx.experimental.proxy_tensor import make_fx

    p, _, shape, _ = _pair(PN, name, device, torch.float32)
    p.train(training)
    x = torch.randn(shape, device=device, requires_grad=True)

    def fwd_bwd(x):
        y = p(x)
        y = y[0] if isinstance(y, tuple) else y
        return torch.autograd.grad(y.sum(), x)

    graph = make_fx(fwd_bwd)(x).graph
    targets = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    op = MODULE_OPS[name]
    assert f"pycnn.{op}.default" in targets, targets
    assert any(t.startswith(f"pycnn.{op}_backward") for t in targets), targets
    assert not any(t.startswith("aten.") and ("conv" in t or "pool" in t or "batch_norm" in t) for t in targets), targets
