"""pycnn.fuse: batch-norm folded into the convolution before it, only where that is exact.

Every model is put through a few training-mode forwards first, so that the
running statistics are far from (0, 1) and a wrong fold shows."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import pycnn
import pycnn.models
import pycnn.nn as pnn

MODELS = pycnn.models.list_models()
# A small input each architecture takes (alexnet and vgg11 need 224x224 for their first Linear; vgg11 narrower).
SMALL = {"lenet": (28, {}), "lenet_bn": (28, {}), "alexnet": (224, {}), "vgg11": (224, {"width_divisor": 16}),
         "nin": (67, {}), "googlenet": (32, {}), "resnet18": (32, {}), "densenet": (32, {}),
         "resnet9": (28, {})}
TOLERANCE = 1e-5  # largest difference relative to the output's scale (float32)


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def _warmed(model, x, steps=3):
    """`model` after `steps` training-mode forwards on shifted, scaled copies of x, in eval mode."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(x * (1.5 + i) + 0.3)
    # Non-trivial affine parameters too.
    for bn in _batch_norms(model):
        if bn.affine:
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _relative(a, b):
    return float((a.double() - b.double()).abs().max()) / max(1.0, float(b.double().abs().max()))


def _small(name, seed=0):
    side, options = SMALL[name]
    torch.manual_seed(seed)
    model = pycnn.models.create(name, **options)
    c, h, w = model.checked_input_size(side)
    return model, torch.randn(3, c, h, w)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_fused_equals_unfused(name):
    model, x = _small(name)
    _warmed(model, x)
    before = copy.deepcopy(model.state_dict())
    fused, report = pycnn.fuse(model, report=True)
    assert fused is not model and not fused.training
    assert type(fused) is type(model) and fused.arch == model.arch
    for key, value in model.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key]), key
    with torch.no_grad():
        expected, actual = model(x), fused(x)
    assert _relative(actual, expected) <= TOLERANCE
    bns, fused_bns = _batch_norms(model), _batch_norms(fused)
    assert len(fused_bns) == len(bns) - len(report.folded)
    assert [bn for bn, _ in report.skipped] == [n for n, m in fused.named_modules() if isinstance(m, _BatchNorm)]
    if bns:
        assert len(fused_bns) < len(bns), report
    assert report.method == "fx", report.trace_error


def test_which_layers_fold():
    """Every conv → BN pair of the models folds, including ResNet's inside the residual
    blocks; BN after a Linear, after pooling or after a concatenation (DenseNet's
    pre-activation blocks) stays, with the reason."""
    _, report = pycnn.fuse(pycnn.models.create("resnet18").eval(), report=True)
    assert len(report.folded) == 17 and not report.skipped
    assert ("b2.0.conv1", "b2.0.bn1") in report.folded and ("b1.0", "b1.1") in report.folded
    _, report = pycnn.fuse(pycnn.models.create("lenet_bn").eval(), report=True)
    assert report.folded == [("conv1.0", "conv1.1"), ("conv2.0", "conv2.1")]
    assert [name for name, _ in report.skipped] == ["fc1.1", "fc2.1"]
    assert "Linear" in report.skipped[0][1]
    _, report = pycnn.fuse(pycnn.models.create("densenet").eval(), report=True)
    assert report.folded == [("b1.0", "b1.1")]
    reasons = dict(report.skipped)
    assert "cat" in reasons["dense1.layers.1.0"] and "MaxPool2d" in reasons["dense1.layers.0.0"]
    assert "folded  b1.1 into b1.0" in str(report)


def test_training_mode_is_refused():
    model = pycnn.models.create("lenet_bn")
    with pytest.raises(ValueError, match="training mode"):
        pycnn.fuse(model)
    model.eval()
    model.conv1[1].train()
    with pytest.raises(ValueError, match=r"conv1\.1 in training mode"):
        pycnn.fuse(model)


def test_inplace_and_fused_layers_are_identities():
    model, x = _small("lenet_bn")
    _warmed(model, x)
    with torch.no_grad():
        expected = model(x)
    assert pycnn.fuse(model, inplace=True) is model
    assert isinstance(model.conv1[1], nn.Identity) and isinstance(model.conv1[0], pnn.Conv2d)
    assert "conv1.1.running_mean" not in model.state_dict()
    with torch.no_grad():
        assert _relative(model(x), expected) <= TOLERANCE


def _conv_bn(bn, bias=True):
    torch.manual_seed(0)
    model = nn.Sequential(pnn.Conv2d(3, 8, 3, padding=1, bias=bias), bn, nn.ReLU())
    return _warmed(model, torch.randn(4, 3, 10, 10))


def test_no_bias_and_affine_false_fold():
    x = torch.randn(2, 3, 10, 10)
    for model in (_conv_bn(pnn.BatchNorm2d(8), bias=False), _conv_bn(pnn.BatchNorm2d(8, affine=False))):
        fused, report = pycnn.fuse(model, report=True)
        assert report.folded == [("0", "1")] and fused[0].bias is not None
        with torch.no_grad():
            assert _relative(fused(x), model(x)) <= TOLERANCE


def test_batch_statistics_in_eval_are_left_and_reported():
    model = _conv_bn(pnn.BatchNorm2d(8, track_running_stats=False))
    fused, report = pycnn.fuse(model, report=True)
    assert not report.folded and report.skipped[0][0] == "1"
    assert "track_running_stats=False" in report.skipped[0][1]
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))


def test_a_convolution_output_read_twice_is_not_folded():
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = pnn.Conv2d(3, 4, 3, padding=1)
            self.bn = pnn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _warmed(TwoUses(), torch.randn(4, 3, 8, 8))
    fused, report = pycnn.fuse(model, report=True)
    assert not report.folded and "also used" in report.skipped[0][1]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))


def test_a_model_that_does_not_trace_falls_back_to_sequential_pairs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(pnn.Conv2d(3, 4, 3), pnn.BatchNorm2d(4), nn.ReLU())
            self.conv = pnn.Conv2d(4, 4, 3)
            self.bn = pnn.BatchNorm2d(4)

        def forward(self, x):
            x = self.stem(x)
            if x.sum() > 0:  # data-dependent: torch.fx cannot trace it
                return self.bn(self.conv(x))
            return self.conv(x)

    model = _warmed(Branchy(), torch.randn(4, 3, 10, 10))
    fused, report = pycnn.fuse(model, report=True)
    assert report.method == "sequential" and report.trace_error
    assert report.folded == [("stem.0", "stem.1")] and [n for n, _ in report.skipped] == ["bn"]
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert _relative(fused(x), model(x)) <= TOLERANCE


def test_float64_model_folds_in_float64():
    model = _conv_bn(pnn.BatchNorm2d(8)).double()
    fused = pycnn.fuse(model)
    assert fused[0].weight.dtype == torch.float64
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        assert _relative(fused(x), model(x)) <= 1e-12


def test_converted_torchvision_resnet18_fuses():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = pycnn.convert(torchvision.models.resnet18(weights=None, num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    _warmed(model, x)
    fused, report = pycnn.fuse(model, report=True)
    assert report.method == "fx" and len(report.folded) == 20 and not report.skipped  # incl. the downsample pairs
    assert isinstance(fused, torchvision.models.ResNet)
    with torch.no_grad():
        assert _relative(fused(x), model(x)) <= TOLERANCE


def test_scripted_model_is_refused():
    with pytest.raises(TypeError, match="fuse first"):
        pycnn.fuse(torch.jit.script(pycnn.models.create("lenet_bn").eval()))


def test_torchscript_of_a_fused_model(tmp_path):
    pytest.importorskip("onnx")
    from export import torchscript as torchscript_export

    model, x = _small("resnet18")
    fused = pycnn.fuse(_warmed(model, x))
    path = str(tmp_path / "fused.pt")
    torchscript_export.export_torchscript(fused, path)  # raises if native operators appear
    loaded = torch.jit.load(path)
    kinds = torchscript_export.graph_operators(loaded)
    assert torchscript_export.pycnn_operators(kinds)
    with torch.no_grad():
        assert _relative(loaded(x), model(x)) <= TOLERANCE


def test_onnx_of_a_fused_model(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from export import onnx as onnx_export

    model, x = _small("lenet_bn")
    fused = pycnn.fuse(_warmed(model, x))
    path = str(tmp_path / "fused.onnx")
    proto = onnx_export.export_onnx(fused, path)
    assert onnx_export.non_standard_nodes(proto) == set()
    (out,) = onnx_export.run_onnx(path, [x])
    with torch.no_grad():
        assert _relative(torch.as_tensor(out), model(x)) <= 1e-4
