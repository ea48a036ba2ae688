"""pycnn under TorchScript, torch.export and torch.compile."""

import io
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import CUDA_SKIP, assert_close_scaled


def _pycnn_targets(graph):
    return {str(n.target) for n in graph.nodes if n.op == "call_function" and "pycnn" in str(n.target)}


# ---------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------


def test_jit_script_function(ops, device, dtype):
    def net(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor) -> torch.Tensor:
        y = torch.ops.pycnn.corr2d(x, w, b, [1, 1], [1, 1], [1, 1], 1)
        y = torch.ops.pycnn.batch_norm(y, None, None, rm, rv, False, 0.1, 1e-5)[0]
        y = torch.relu(y)
        y, _ = torch.ops.pycnn.max_pool2d(y, [2, 2], [2, 2], [0, 0], [1, 1], False)
        y = torch.ops.pycnn.avg_pool2d(y, [2, 2], [1, 1], [1, 1], True, False, None)
        return torch.ops.pycnn.adaptive_avg_pool2d(y, [2, 1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    assert "pycnn::corr2d" in str(scripted.graph)

    x = torch.randn(2, 3, 8, 9, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=dtype, device=device, requires_grad=True)
    b = torch.randn(4, dtype=dtype, device=device, requires_grad=True)
    rm = torch.randn(4, dtype=dtype, device=device)
    rv = torch.rand(4, dtype=dtype, device=device) + 0.5

    def native(x, w, b):
        y = F.conv2d(x, w, b, padding=1)
        y = F.batch_norm(y, rm, rv, training=False)
        y = F.max_pool2d(torch.relu(y), 2)
        y = F.avg_pool2d(y, 2, 1, 1, ceil_mode=True, count_include_pad=False)
        return F.adaptive_avg_pool2d(y, (2, 1))

    out = scripted(x, w, b, rm, rv)
    ref = native(x, w, b)
    assert_close_scaled(out, ref, dtype, "conv")
    go = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, w, b), go)
    ref_grads = torch.autograd.grad(ref, (x, w, b), go)
    for g, r in zip(grads, ref_grads):
        assert_close_scaled(g, r, dtype, "conv")


class _ScriptableNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(6, 2, 3, 3))
        self.bn_weight = torch.nn.Parameter(torch.rand(6) + 0.5)
        self.bn_bias = torch.nn.Parameter(torch.randn(6))
        self.register_buffer("running_mean", torch.zeros(6))
        self.register_buffer("running_var", torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.pycnn.corr2d(x, self.weight, None, [2, 1], [1, 1], [1, 2], 2)
        outs = torch.ops.pycnn.batch_norm(
            y, self.bn_weight, self.bn_bias, self.running_mean, self.running_var, self.training, 0.1, 1e-5
        )
        y = outs[0]
        if self.training:
            with torch.no_grad():
                self.running_mean.copy_(outs[3])
                self.running_var.copy_(outs[4])
        y, _ = torch.ops.pycnn.max_pool2d(y, [3, 3], [2, 2], [1, 1], [1, 1], True)
        return y


def test_jit_script_module(ops, device):
    m = _ScriptableNet().to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_ScriptableNet().to(device))
    scripted.load_state_dict(m.state_dict())
    x = torch.randn(3, 4, 9, 8, device=device)

    def native(x, rm, rv, training):
        y = F.conv2d(x, m.weight, None, (2, 1), 1, (1, 2), 2)
        y = F.batch_norm(y, rm, rv, m.bn_weight, m.bn_bias, training, 0.1, 1e-5)
        return F.max_pool2d(y, 3, 2, 1, ceil_mode=True)

    rm, rv = m.running_mean.clone(), m.running_var.clone()
    for training in (True, True, False):
        scripted.train(training)
        out = scripted(x)
        ref = native(x, rm, rv, training)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(scripted.running_mean, rm, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(scripted.running_var, rv, rtol=1e-5, atol=1e-6)
        x = torch.randn_like(x) * 2


# ---------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------


def _build(lib, device):
    return torch.nn.Sequential(
        lib.Conv2d(3, 6, 3, padding=1),
        lib.BatchNorm2d(6),
        torch.nn.ReLU(),
        lib.MaxPool2d(2, ceil_mode=True),
        lib.Conv2d(6, 6, 3, groups=3, padding="same", bias=False),
        lib.AvgPool2d(2, count_include_pad=False, padding=1),
        lib.AdaptiveAvgPool2d((2, 1)),
        torch.nn.Flatten(),
    ).to(device)


def _randomise_bn(model):
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn_like(buf) * 0.3)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand_like(buf) + 0.5)


def test_export_dynamic_batch_eval(PN, device):
    model = _build(PN, device)
    _randomise_bn(model)
    model.eval()
    native = _build(torch.nn, device)
    native.load_state_dict(model.state_dict())
    native.eval()

    batch = torch.export.Dim("batch", min=2, max=64)
    example = torch.randn(4, 3, 11, 10, device=device)
    ep = torch.export.export(model, (example,), dynamic_shapes={"input": {0: batch}})
    targets = _pycnn_targets(ep.graph)
    assert any("corr2d" in t for t in targets), targets
    assert any("max_pool2d" in t for t in targets), targets
    assert any("batch_norm" in t for t in targets), targets

    exported = ep.module()
    for n in (2, 5, 16):
        x = torch.randn(n, 3, 11, 10, device=device)
        out = exported(x)
        assert out.shape == (n, 12)
        torch.testing.assert_close(out, native(x), rtol=1e-4, atol=1e-5)

    # The program survives serialisation (the ops are found by name on load).
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    x = torch.randn(3, 3, 11, 10, device=device)
    torch.testing.assert_close(loaded.module()(x), native(x), rtol=1e-4, atol=1e-5)


def test_export_training_updates_buffers(PN, device):
    model = _build(PN, device).train()
    native = _build(torch.nn, device).train()
    native.load_state_dict(model.state_dict())
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = torch.export.export(model, (torch.randn(4, 3, 11, 10, device=device),), dynamic_shapes={"input": {0: batch}})
    exported = ep.module()
    exported.load_state_dict(model.state_dict())
    for n in (3, 6):
        x = torch.randn(n, 3, 11, 10, device=device)
        torch.testing.assert_close(exported(x), native(x), rtol=1e-4, atol=1e-5)
        e_state, n_state = exported.state_dict(), native.state_dict()
        for k in ("1.running_mean", "1.running_var"):
            torch.testing.assert_close(e_state[k], n_state[k], rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


def test_compile_functional_fullgraph(PF, device, dtype):
    torch._dynamo.reset()

    def net(PFmod, x, w, b, bn_w, bn_b, rm, rv):
        y = PFmod.conv2d(x, w, b, stride=1, padding=1)
        y = PFmod.batch_norm(y, rm, rv, bn_w, bn_b, training=True, momentum=0.2)
        y = torch.relu(y)
        y, idx = PFmod.max_pool2d(y, 2, return_indices=True)
        y = PFmod.avg_pool2d(y, 3, 1, 1, ceil_mode=True, count_include_pad=False)
        return PFmod.adaptive_avg_pool2d(y, (None, 2)), idx

    compiled = torch.compile(lambda *a: net(PF, *a), fullgraph=True, backend="aot_eager")

    def leaves():
        g = torch.Generator().manual_seed(1)
        mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
        return [mk(2, 3, 9, 8).requires_grad_(), mk(4, 3, 3, 3).requires_grad_(), mk(4).requires_grad_(),
                mk(4).requires_grad_(), mk(4).requires_grad_(), mk(4) * 0.1, mk(4).abs() + 0.5]

    results = []
    for fn in (compiled, lambda *a: net(PF, *a), lambda *a: net(F, *a)):
        args = leaves()
        out, idx = fn(*args)
        go = torch.ones_like(out) + torch.arange(out.numel(), device=device, dtype=dtype).reshape(out.shape) / 10
        grads = torch.autograd.grad(out, args[:5], go)
        results.append((out, idx, grads, args[5], args[6]))

    ref = results[2]
    for res in results[:2]:
        assert_close_scaled(res[0], ref[0], dtype, "conv")
        assert torch.equal(res[1], ref[1])
        for g, r in zip(res[2], ref[2]):
            assert_close_scaled(g, r, dtype, "conv")
        # running statistics were updated in place, also by the compiled graph
        assert_close_scaled(res[3], ref[3], dtype, "norm")
        assert_close_scaled(res[4], ref[4], dtype, "norm")


def test_compile_module_fullgraph(PN, device):
    torch._dynamo.reset()
    model = _build(PN, device).train()
    native = _build(torch.nn, device).train()
    native.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for n in (4, 4, 5):
        x = torch.randn(n, 3, 11, 10, device=device)
        xp, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = compiled(xp), native(xn)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        go = torch.randn_like(ref)
        out.backward(go)
        ref.backward(go)
        torch.testing.assert_close(xp.grad, xn.grad, rtol=1e-4, atol=1e-5)
        for (k, p), (_, q) in zip(model.named_parameters(), native.named_parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=k)
        model.zero_grad()
        native.zero_grad()
    torch.testing.assert_close(model[1].running_mean, native[1].running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, native[1].running_var, rtol=1e-5, atol=1e-6)
    assert int(model[1].num_batches_tracked) == 3


@pytest.mark.parametrize(
    "device, dtype",
    [("cpu", torch.bfloat16), ("cpu", torch.float16),
     pytest.param("cuda", torch.float16, marks=CUDA_SKIP), pytest.param("cuda", torch.bfloat16, marks=CUDA_SKIP)],
    ids=["cpu-bfloat16", "cpu-float16", "cuda-float16", "cuda-bfloat16"],
)
def test_autocast_as_native(device, dtype):
    """Under torch.autocast, every layer's output dtype is native's: the
    convolution in the region's dtype, batch-norm in the dtype it receives
    (with its float32 parameters), the poolings too; values agree and the
    backward gives float32 parameter gradients."""
    import pycnn.nn as PN

    def build(layers):
        torch.manual_seed(0)
        return torch.nn.Sequential(layers.Conv2d(3, 8, 3, padding=1), layers.BatchNorm2d(8), torch.nn.ReLU(),
                                   layers.MaxPool2d(2), layers.AdaptiveAvgPool2d(1)).to(device)

    ours, native = build(PN), build(torch.nn)
    x = torch.randn(4, 3, 16, 16, device=device)
    outputs = []
    for model in (ours, native):
        with torch.autocast(device, dtype=dtype):
            steps = [x]
            for layer in model:
                steps.append(layer(steps[-1]))
        steps[-1].float().sum().backward()
        outputs.append(steps[1:])
    for i, (a, b) in enumerate(zip(*outputs)):
        assert a.dtype == b.dtype, f"layer {i}: {a.dtype} against native {b.dtype}"
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2, msg=f"layer {i}")
    assert ours[0].weight.grad.dtype == torch.float32
    torch.testing.assert_close(ours[0].weight.grad, native[0].weight.grad, rtol=5e-2, atol=5e-2)
