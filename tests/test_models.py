"""pycnn.models: the eight classic CNNs, each on pycnn's operators and as a native twin.

Shapes (output and per stage, as ARCHITECTURES.md lists them), the two backends'
parameters, outputs, gradients and batch-norm statistics, which operators run,
TorchScript, torch.export, and the summary table.

The heavy models run at their default input size with batch 2; VGG-11 runs at a
quarter width (width_divisor=4, the reference run's) except where its full-width
shapes and parameters are checked.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import assert_close_scaled

import pycnn.nn as pnn
from pycnn.models import ClassicCNN, create, list_models, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["lenet", "lenet_bn", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet", "resnet9"]
# Options for the tests that run forward and backward several times.
LIGHT = {"vgg11": {"width_divisor": 4}}

# ARCHITECTURES.md: the shape after each listed stage (without the batch), at the default input size.
STAGE_SHAPES = {
    "lenet": {"conv1": (6, 28, 28), "pool1": (6, 14, 14), "conv2": (16, 10, 10), "pool2": (16, 5, 5),
              "flatten": (400,)},
    "lenet_bn": {"conv1": (6, 24, 24), "pool1": (6, 12, 12), "conv2": (16, 8, 8), "pool2": (16, 4, 4),
                 "flatten": (256,)},
    "alexnet": {"conv1": (96, 54, 54), "pool1": (96, 26, 26), "conv2": (256, 26, 26), "pool2": (256, 12, 12),
                "conv3": (384, 12, 12), "conv4": (384, 12, 12), "conv5": (256, 12, 12), "pool3": (256, 5, 5),
                "flatten": (6400,)},
    "vgg11": {"b1": (64, 112, 112), "b2": (128, 56, 56), "b3": (256, 28, 28), "b4": (512, 14, 14),
              "b5": (512, 7, 7), "flatten": (25088,)},
    "nin": {"nin1": (96, 54, 54), "pool1": (96, 26, 26), "nin2": (256, 26, 26), "pool2": (256, 12, 12),
            "nin3": (384, 12, 12), "pool3": (384, 5, 5), "nin4": (10, 5, 5), "gap": (10, 1, 1), "flatten": (10,)},
    "googlenet": {"b1": (64, 24, 24), "b2": (192, 12, 12), "b3": (480, 6, 6), "b4": (832, 3, 3), "b5": (1024,)},
    "resnet18": {"b1": (64, 24, 24), "b2": (64, 24, 24), "b3": (128, 12, 12), "b4": (256, 6, 6), "b5": (512, 3, 3),
                 "flatten": (512,)},
    "densenet": {"b1": (64, 24, 24), "dense1": (192, 24, 24), "transition1": (96, 12, 12), "dense2": (224, 12, 12),
                 "transition2": (112, 6, 6), "dense3": (240, 6, 6), "transition3": (120, 3, 3),
                 "dense4": (248, 3, 3), "flatten": (248,)},
    # Not in ARCHITECTURES.md (pycnn's own): from its docstring.
    "resnet9": {"prep": (16, 28, 28), "layer1": (32, 14, 14), "layer2": (64, 7, 7), "layer3": (128, 3, 3),
                "pool": (128, 1, 1), "flatten": (128,)},
}
DEFAULT_INPUT_SIZES = {"lenet": (1, 28, 28), "lenet_bn": (1, 28, 28), "alexnet": (1, 224, 224),
                       "vgg11": (1, 224, 224), "nin": (1, 224, 224), "googlenet": (1, 96, 96),
                       "resnet18": (1, 96, 96), "densenet": (1, 96, 96), "resnet9": (1, 28, 28)}
# Parameter counts at the defaults (1 input channel, 10 classes), from the layer lists by hand.
PARAMETERS = {"lenet": 61_706, "lenet_bn": 44_878, "alexnet": 46_764_746, "vgg11": 128_806_154,
              "nin": 1_992_166, "googlenet": 5_977_530, "resnet18": 11_178_378, "densenet": 758_226,
              # prep 144+32, layer1 4,608+64 + 2x(9,216+64), layer2 18,432+128,
              # layer3 73,728+256 + 2x(147,456+256), fc 1,290
              "resnet9": 412_666}

NATIVE_NAME_PARTS = ("convolution", "conv2d", "max_pool", "avg_pool", "batch_norm", "cudnn", "mkldnn")


def _pair_of_models(name, device="cpu", dtype=torch.float32, **options):
    """A pycnn model and its native twin holding the native model's weights."""
    options = {**LIGHT.get(name, {}), **options}
    native = create(name, backend="native", **options).to(device=device, dtype=dtype)
    ours = create(name, backend="pycnn", **options).to(device=device, dtype=dtype)
    ours.load_state_dict(native.state_dict())
    return ours, native


def _input(model, batch=2, device="cpu", dtype=torch.float32, **kwargs):
    return torch.randn(batch, *model.default_input_size, device=device, dtype=dtype, **kwargs)


# ---------------------------------------------------------------------------
# Registry and construction
# ---------------------------------------------------------------------------


def test_list_models():
    assert list_models() == MODELS


def test_unknown_name_backend_and_option():
    with pytest.raises(ValueError, match="known models: lenet, lenet_bn, alexnet, vgg11, nin, googlenet"):
        create("resnet50")
    with pytest.raises(ValueError, match="backend"):
        create("lenet", backend="cudnn")
    with pytest.raises(TypeError, match="width_divisor"):
        create("lenet", width_divisor=2)
    with pytest.raises(ValueError, match="width_divisor"):
        create("vgg11", width_divisor=0)
    with pytest.raises(ValueError, match="dropout"):
        create("alexnet", dropout=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        create("lenet", num_classes=0)


@pytest.mark.parametrize("name", MODELS)
def test_output_and_stage_shapes(name):
    """Batch 2 at the default input size gives (2, 10); every listed stage has ARCHITECTURES.md's shape."""
    model = create(name)
    assert isinstance(model, ClassicCNN) and model.arch == name and model.backend == "pycnn"
    assert model.default_input_size == DEFAULT_INPUT_SIZES[name]
    shapes = model.stage_shapes(batch=2)
    expected = STAGE_SHAPES[name]
    assert {k: shapes[k] for k in expected} == expected
    assert [k for k in shapes if k in expected] == list(expected), "stages out of order"
    assert list(shapes.values())[-1] == (10,)
    model.eval()
    with torch.no_grad():
        assert model(_input(model)).shape == (2, 10)


def test_options_change_the_architecture():
    vgg = create("vgg11", width_divisor=4)  # the reference run: 16, 32, 64, 128, 128 channels
    shapes = vgg.stage_shapes()
    assert [shapes[f"b{i}"][0] for i in range(1, 6)] == [16, 32, 64, 128, 128]
    assert shapes["flatten"] == (6272,) and vgg.fc1[0].in_features == 6272

    model = create("googlenet", num_classes=7, in_channels=3)
    assert model.default_input_size == (3, 96, 96)
    assert model.b1[0].in_channels == 3
    with torch.no_grad():
        assert model.eval()(_input(model)).shape == (2, 7)

    nin = create("nin", num_classes=5, dropout=0.2)
    assert nin.dropout.p == 0.2 and nin.stage_shapes()["nin4"] == (5, 5, 5)

    dense = create("densenet", growth_rate=16, convs_per_block=(2, 2))
    shapes = dense.stage_shapes()
    assert shapes["dense1"] == (96, 24, 24) and shapes["transition1"] == (48, 12, 12)
    assert shapes["dense2"] == (80, 12, 12) and "dense3" not in shapes

    resnet = create("resnet18")
    shapes = resnet.stage_shapes((1, 224, 224))
    assert [shapes[f"b{i}"][1] for i in range(1, 6)] == [56, 56, 28, 14, 7]


@pytest.mark.parametrize("name", MODELS)
def test_backends_have_the_same_parameters(name):
    ours, native = create(name), create(name, backend="native")
    assert list(ours.state_dict()) == list(native.state_dict())
    counts = [sum(p.numel() for p in m.parameters()) for m in (ours, native)]
    assert counts == [PARAMETERS[name]] * 2
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in native.parameters()]
    # Every layer that pycnn implements is pycnn's in one and torch's in the other.
    pycnn_layers = tuple(getattr(pnn, n) for n in pnn.__all__)
    native_layers = tuple(getattr(torch.nn, n) for n in pnn.__all__)
    ours_kinds = [type(m) for m in ours.modules() if isinstance(m, native_layers)]
    native_kinds = [type(m) for m in native.modules() if isinstance(m, native_layers)]
    assert ours_kinds and all(issubclass(k, pycnn_layers) for k in ours_kinds)
    assert len(native_kinds) == len(ours_kinds) and not any(issubclass(k, pycnn_layers) for k in native_kinds)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "googlenet", "resnet18", "densenet"])
def test_xavier_initialisation(name):
    model = create(name)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers
    for layer in layers:
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert float(w.abs().max()) <= bound * (1 + 1e-6)
        if w.numel() >= 2000:  # uniform(-b, b) has standard deviation b / sqrt(3)
            assert abs(float(w.std()) / (bound / math.sqrt(3)) - 1) < 0.1, layer
        assert torch.count_nonzero(layer.bias) == 0
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


# ---------------------------------------------------------------------------
# pycnn against the native twin
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_backends_agree(name, device):
    """Same weights: outputs, every parameter's gradient, the input's gradient and the batch-norm
    statistics after a training step agree (float64), then the eval-mode outputs."""
    dtype = torch.float64
    ours, native = _pair_of_models(name, device, dtype)
    x = _input(ours, device=device, dtype=dtype)

    outputs, grads = [], []
    for model in (ours, native):
        model.train()
        leaf = x.clone().requires_grad_()
        torch.manual_seed(1)  # the same dropout masks on both sides
        out = model(leaf)
        weights = torch.linspace(-1, 1, out.numel(), device=device, dtype=dtype).reshape(out.shape)
        (out * weights).sum().backward()
        outputs.append(out.detach())
        grads.append({"input": leaf.grad, **{n: p.grad for n, p in model.named_parameters()}})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        optimizer.step()
    assert_close_scaled(outputs[0], outputs[1], dtype, "conv", msg=f"{name} training output")
    assert grads[0].keys() == grads[1].keys()
    for key in grads[1]:
        assert grads[0][key] is not None, key
        assert_close_scaled(grads[0][key], grads[1][key], dtype, "conv", msg=f"{name} gradient of {key}")
    ours_state, native_state = ours.state_dict(), native.state_dict()
    for key in native_state:  # parameters after the SGD step, running statistics, num_batches_tracked
        assert_close_scaled(ours_state[key], native_state[key], dtype, "conv", msg=f"{name} {key}")

    ours.eval(), native.eval()
    x = _input(ours, device=device, dtype=dtype)
    with torch.no_grad():
        assert_close_scaled(ours(x), native(x), dtype, "conv", msg=f"{name} eval output")


def _gradient_error(grads, reference):
    """Largest difference from the reference gradient of any parameter, relative to that
    gradient's largest entry (or 1e-3 of the largest entry of all, for gradients that are
    zero in exact arithmetic, like a convolution bias followed by batch-norm)."""
    overall = max(float(g.abs().max()) for g in reference.values())
    return max(float((grads[k].double() - g).abs().max()) / max(float(g.abs().max()), 1e-3 * overall)
               for k, g in reference.items())


def _relu_input_signs(model):
    """Forward pre-hooks on every nn.ReLU of model; the list they fill with the sign of each input."""
    signs = []
    hooks = [m.register_forward_pre_hook(lambda module, args: signs.append(args[0].detach() > 0))
             for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    return signs, hooks


@pytest.mark.parametrize("name, batch", [("lenet_bn", 8), ("resnet18", 2)])
def test_backends_agree_float32(name, batch, device):
    """In float32, pycnn's outputs, gradients and statistics are as close to a float64 reference
    as native float32's (deep gradients through batch-norm lose digits in both).

    A ReLU whose input lies within float32 rounding of zero may go either way in either
    backend, and through training-mode batch-norm that one decision moves a whole channel's
    gradient: such an input is not a comparison of the kernels, so it is drawn again (a
    ResNet-18 step has about 10^6 ReLU inputs, and now and then one falls that close)."""
    for _ in range(5):
        ours, native = _pair_of_models(name, device)
        reference = create(name, backend="native").to(device=device, dtype=torch.float64)
        reference.load_state_dict(native.state_dict())
        x = _input(ours, batch=batch, device=device)
        results, signs = {}, {}
        for key, model in (("pycnn", ours), ("native", native), ("reference", reference)):
            signs[key], hooks = _relu_input_signs(model)
            model.train()
            out = model(x.to(next(model.parameters()).dtype))
            out.square().mean().backward()
            for hook in hooks:
                hook.remove()
            results[key] = (out.detach(), {k: p.grad for k, p in model.named_parameters()},
                            {k: b for k, b in model.named_buffers()})
        if all(torch.equal(a, b) for key in ("pycnn", "native") for a, b in zip(signs[key], signs["reference"])):
            break
    else:
        pytest.fail("five inputs in a row had a ReLU decided by float32 rounding")
    ref_out, ref_grads, ref_buffers = results["reference"]
    assert_close_scaled(results["pycnn"][0], ref_out, torch.float32, "conv", msg=f"{name} training output")
    ours_error = _gradient_error(results["pycnn"][1], ref_grads)
    native_error = _gradient_error(results["native"][1], ref_grads)
    assert ours_error < 1e-2 and ours_error <= 2 * native_error + 1e-3, (ours_error, native_error)
    for key, buffer in ref_buffers.items():
        assert_close_scaled(results["pycnn"][2][key], buffer, torch.float32, "norm", msg=f"{name} {key}")
    with torch.no_grad():
        assert_close_scaled(ours.eval()(x), reference.eval()(x.double()), torch.float32, "conv",
                            msg=f"{name} eval output")


class _RecordOperators(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))  # e.g. "aten.convolution.default", "pycnn.corr2d.default"
        return func(*args, **(kwargs or {}))


def _operators_of_a_training_step(model, device):
    model.train()
    x = _input(model, device=device)
    with _RecordOperators() as recorder:
        model(x).logsumexp(1).sum().backward()
    return recorder.names


def _native_operators(names):
    return sorted(n for n in names if not n.startswith("pycnn.") and any(p in n for p in NATIVE_NAME_PARTS))


@pytest.mark.parametrize("name", MODELS)
def test_only_pycnn_operators_for_cnn_layers(name, device):
    """No native convolution, pooling or batch-norm in the forward and backward of a pycnn
    model (the native twin does call them, so the check can fail)."""
    ours, native = _pair_of_models(name, device)
    names = _operators_of_a_training_step(ours, device)
    assert _native_operators(names) == []
    expected = {"pycnn.corr2d.default", "pycnn.corr2d_backward_input.default", "pycnn.corr2d_backward_weight.default"}
    layer_ops = {pnn.MaxPool2d: "max_pool2d", pnn.AvgPool2d: "avg_pool2d",
                 pnn.AdaptiveAvgPool2d: "adaptive_avg_pool2d", pnn.BatchNorm2d: "batch_norm",
                 pnn.BatchNorm1d: "batch_norm"}
    for kind, op in layer_ops.items():
        if any(isinstance(m, kind) for m in ours.modules()):
            expected |= {f"pycnn.{op}.default", f"pycnn.{op}_backward.default"}
    assert expected <= names, sorted(expected - names)

    native_names = _operators_of_a_training_step(native, device)
    assert any("convolution" in n for n in _native_operators(native_names))
    assert not any(n.startswith("pycnn.") for n in native_names)


# ---------------------------------------------------------------------------
# TorchScript and torch.export
# ---------------------------------------------------------------------------


def _randomise_batch_norm(model):
    with torch.no_grad():
        for key, buffer in model.named_buffers():
            if key.endswith("running_mean"):
                buffer.copy_(torch.randn_like(buffer) * 0.1)
            elif key.endswith("running_var"):
                buffer.copy_(torch.rand_like(buffer) + 0.5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", MODELS)
def test_jit_script(name, device):
    model = create(name, **LIGHT.get(name, {})).to(device)
    _randomise_batch_norm(model)
    model.eval()
    scripted = torch.jit.script(model)
    assert "pycnn::corr2d" in str(scripted.inlined_graph)
    x = _input(model, device=device)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
    if any(isinstance(m, pnn.BatchNorm2d) for m in model.modules()):  # training mode updates the statistics
        scripted.train(), model.train()
        scripted(x)
        model(x)
        for (key, a), b in zip(scripted.named_buffers(), model.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", MODELS)
def test_export_dynamic_batch(name, device):
    model = create(name, **LIGHT.get(name, {})).to(device)
    _randomise_batch_norm(model)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (_input(model, device=device),), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "pycnn.corr2d.default" in targets
    assert _native_operators(targets) == []
    exported = program.module()
    with torch.no_grad():
        for n in (1, 3):
            x = _input(model, batch=n, device=device)
            out = exported(x)
            assert out.shape == (n, 10)
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_summary_totals(name):
    model = create(name, **LIGHT.get(name, {}))
    table = summary(model)
    total = sum(p.numel() for p in model.parameters())
    assert table.total_params == total == sum(r.params for r in table.layer_rows)
    assert table.total_macs == sum(r.macs for r in table.layer_rows) > 0
    # The stage rows: the stage shapes, and the totals of the layers under them.
    stages = [r for r in table.rows if r.depth == 0]
    assert [r.name for r in stages] == [n for n, _ in model.named_children()]
    assert {r.name: r.output_shape for r in stages} == model.stage_shapes()
    assert sum(r.params for r in stages) == total and sum(r.macs for r in stages) == table.total_macs
    # Every leaf layer appears, in execution order (the Inception paths p1..p4 one after the other).
    leaves = [n for n, m in model.named_modules() if n and next(iter(m.children()), None) is None]
    assert [r.name for r in table.layer_rows] == leaves
    text = str(table)
    assert f"{total:,}" in text and f"{table.total_macs:,}" in text


def test_summary_lenet_macs_by_hand():
    table = summary(create("lenet"))
    rows = {r.name: r for r in table.rows}
    assert rows["conv1.0"].macs == 6 * 28 * 28 * 1 * 5 * 5 == 117_600
    assert rows["conv2.0"].macs == 16 * 10 * 10 * 6 * 5 * 5 == 240_000
    assert rows["fc1.0"].macs + rows["fc2.0"].macs + rows["fc3"].macs == 400 * 120 + 120 * 84 + 84 * 10 == 58_920
    assert table.total_macs == 416_520
    assert table.total_params == 61_706
    assert rows["pool1"].macs == 0 and rows["conv1.1"].macs == 0
    assert rows["conv1.0"].params == 6 * 25 + 6 and rows["conv2.0"].output_shape == (16, 10, 10)


def test_summary_alexnet_macs_by_hand():
    convs = [96 * 54 * 54 * 1 * 11 * 11, 256 * 26 * 26 * 96 * 5 * 5, 384 * 12 * 12 * 256 * 3 * 3,
             384 * 12 * 12 * 384 * 3 * 3, 256 * 12 * 12 * 384 * 3 * 3]
    linears = [6400 * 4096, 4096 * 4096, 4096 * 10]
    table = summary(create("alexnet"))
    assert table.total_macs == sum(convs) + sum(linears) == 938_146_176
    grouped = summary(torch.nn.Sequential(pnn.Conv2d(4, 6, 3, groups=2)), input_size=(4, 5, 5))
    assert grouped.total_macs == 6 * 3 * 3 * (4 // 2) * 3 * 3


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pycnn.models", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_summary_cli():
    result = _run_cli("summary", "lenet")
    assert result.returncode == 0, result.stderr
    assert "416,520" in result.stdout and "61,706" in result.stdout
    assert "conv2.0" in result.stdout and "16x10x10" in result.stdout

    result = _run_cli("summary", "vgg11", "--input-size", "3", "224", "224", "--backend", "native",
                      "--option", "width_divisor=4")
    assert result.returncode == 0, result.stderr
    assert "vgg11 (backend native): input 3x224x224" in result.stdout and "6272" in result.stdout

    result = _run_cli("summary", "resnet50")
    assert result.returncode == 2 and "known models" in result.stderr
