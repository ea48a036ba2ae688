"""pycnn.convert: torchvision's classifiers (random weights, small inputs) and user models on pycnn's kernels.

For each model: the converted copy's outputs, input gradient and every parameter's
gradient equal the native model's, in training and in eval mode, and not one native
convolution, pooling or batch-norm ATen operator is dispatched, forward or backward
(recorded with a TorchDispatchMode: FORBIDDEN below). Then strict=True, TorchScript
and ONNX.
"""
import contextlib
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import pycnn
import pycnn.nn
from pycnn.convert import ConversionError

torchvision = pytest.importorskip("torchvision")

# Native ATen operators that must not run in a converted model (overload packets, "aten." left out).
FORBIDDEN = frozenset("""
    conv2d convolution _convolution convolution_backward convolution_overrideable convolution_backward_overrideable
    _convolution_mode conv_transpose2d _slow_conv2d_forward _slow_conv2d_backward thnn_conv2d slow_conv_dilated2d
    _nnpack_spatial_convolution mkldnn_convolution cudnn_convolution cudnn_convolution_relu
    cudnn_convolution_add_relu miopen_convolution miopen_depthwise_convolution _conv_depthwise2d
    max_pool2d max_pool2d_with_indices max_pool2d_with_indices_backward max_pool2d_backward mkldnn_max_pool2d
    mkldnn_max_pool2d_backward quantized_max_pool2d
    avg_pool2d avg_pool2d_backward
    adaptive_avg_pool2d _adaptive_avg_pool2d _adaptive_avg_pool2d_backward mkldnn_adaptive_avg_pool2d
    mkldnn_adaptive_avg_pool2d_backward
    batch_norm _batch_norm_impl_index _batch_norm_impl_index_backward native_batch_norm native_batch_norm_backward
    _native_batch_norm_legit _native_batch_norm_legit_no_training _native_batch_norm_legit_functional
    _batch_norm_with_update _batch_norm_with_update_functional _batch_norm_no_update batch_norm_backward
    cudnn_batch_norm cudnn_batch_norm_backward miopen_batch_norm miopen_batch_norm_backward
    batch_norm_stats batch_norm_elemt batch_norm_backward_reduce batch_norm_backward_elemt
    batch_norm_gather_stats batch_norm_gather_stats_with_counts
""".split())


def forbidden(name: str) -> bool:
    """A native convolution, pooling or batch-norm operator (listed, or a cudnn/miopen/mkldnn one)."""
    name = name.split(".", 1)[1] if name.startswith("aten.") else name
    if name in FORBIDDEN:
        return True
    backend = name.startswith(("cudnn_", "miopen_", "mkldnn_"))
    return backend and any(word in name for word in ("conv", "pool", "batch_norm"))


class Recorder(TorchDispatchMode):
    """The overload packets dispatched while active (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def outputs_of(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for t in result if t is not None]  # GoogLeNet's / Inception's namedtuples in training


def randomise_batch_norm(model):
    """Statistics and affine parameters away from the initial 0/1, so eval mode is tested on real numbers."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)


def assert_close_scaled(actual, expected, what, rtol, atol, floor=1e-30):
    """assert_close with atol relative to the tensor's magnitude (randomly initialised deep models
    without trained statistics produce outputs anywhere from 1e-3 to 1e8), or to `floor` if larger."""
    scale = max(expected.abs().max().item(), floor)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")
    return (actual - expected).abs().max().item() / scale


def run_step(model, x, seed, record=False):
    """Forward and backward of sum(output * fixed weights); returns outputs, input grad, param grads, ops."""
    x = x.clone().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    recorder = Recorder()
    torch.manual_seed(seed)  # dropout and stochastic depth draw the same masks in both models
    with recorder if record else contextlib.nullcontext():
        outs = outputs_of(model(x))
        generator = torch.Generator().manual_seed(123)
        loss = sum((o * torch.randn(o.shape, generator=generator)).sum() for o in outs)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return [o.detach() for o in outs], x.grad, grads, recorder.ops


# Tolerances (atol relative to each tensor's largest magnitude). Measured worst |converted - native| /
# max|native| over outputs, input gradient, parameter gradients and running statistics, float64, every
# model in training and eval mode: 1.0e-6 DenseNet-121, 4.8e-8 Inception v3 (training-mode batch norms on
# 1x1 maps, 2 values per channel), 2e-9 to 6e-9 ResNet-18, MobileNet v2, ShuffleNet v2, at most 1.6e-12
# for the others; float32 outputs in eval mode (FLOAT32_MODELS): at most 8.3e-7.
# Float32 gradients are not a meaningful comparison: in training mode, batch statistics over 2 to 8
# values per channel make them so ill-conditioned that native float32 is itself 3% away from native
# float64 (ResNeXt-50 at 64x64); in eval mode, a pre-activation within rounding of 0 changes sign
# between two float32 implementations (one of 32,768 in ResNet-18's layer1 at 64x64), and the ReLU
# then passes or stops its gradient: 3% on the input gradient. In float64 both agree to 1e-12.
RTOL64, ATOL64 = 1e-5, 1e-5
RTOL32, ATOL32 = 1e-4, 5e-5


def check_equivalent(native, size, modes=("train", "eval"), rtol=RTOL64, atol=ATOL64, batch=2, dtype=torch.float64,
                     gradients=True):
    torch.manual_seed(0)
    native = native.to(dtype)
    randomise_batch_norm(native)
    converted = pycnn.convert(native)
    assert converted is not native
    worst = 0.0
    for mode in modes:
        for m in (native, converted):
            m.train(mode == "train")
        x = torch.randn(batch, *size, dtype=dtype)
        out_n, gx_n, grads_n, ops_n = run_step(native, x, seed=1, record=True)
        out_c, gx_c, grads_c, ops_c = run_step(converted, x, seed=1, record=True)
        assert any(forbidden(o) for o in ops_n), "the recorder misses the native model's operators"
        assert not sorted(o for o in ops_c if forbidden(o)), f"{mode}: native operators dispatched"
        assert any(o.startswith("pycnn.") for o in ops_c)
        assert len(out_c) == len(out_n)
        for i, (a, b) in enumerate(zip(out_c, out_n)):
            worst = max(worst, assert_close_scaled(a, b, f"{mode} output {i}", rtol, atol))
        assert grads_c.keys() == grads_n.keys()
        if not gradients:
            continue
        worst = max(worst, assert_close_scaled(gx_c, gx_n, f"{mode} input gradient", rtol, atol))
        # A gradient that vanishes in exact arithmetic (a convolution's bias before a training-mode
        # batch norm) is rounding noise in both: compared relative to a thousandth of the largest gradient.
        floor = 1e-3 * max(g.abs().max().item() for g in grads_n.values() if g is not None)
        for name in grads_n:
            if grads_n[name] is None:  # unused in this mode (GoogLeNet's auxiliary heads in eval)
                assert grads_c[name] is None, name
                continue
            worst = max(worst, assert_close_scaled(grads_c[name], grads_n[name], f"{mode} grad {name}", rtol, atol,
                                                   floor))
        for (name, b_c), (_, b_n) in zip(converted.named_buffers(), native.named_buffers()):
            if b_n.is_floating_point():
                assert_close_scaled(b_c, b_n, f"{mode} buffer {name}", rtol, atol)
            else:
                assert torch.equal(b_c, b_n), name
    return converted, worst


def small_classifier(model, attribute, features):
    """Swap AlexNet's/VGG's 4096-wide Linear head (about 100M parameters, irrelevant to pycnn) for one Linear."""
    setattr(model, attribute, nn.Sequential(nn.Dropout(0.5), nn.Linear(features, 10)))
    return model


def tv(name, **kwargs):
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


# name -> (builder, input (C, H, W)): the smallest inputs these architectures take, or near them.
MODELS = {
    "resnet18": (lambda: tv("resnet18"), (3, 32, 32)),
    "resnext50_32x4d": (lambda: tv("resnext50_32x4d"), (3, 48, 48)),  # grouped convolutions
    "vgg11": (lambda: small_classifier(tv("vgg11"), "classifier", 512 * 7 * 7), (3, 32, 32)),
    "vgg11_bn": (lambda: small_classifier(tv("vgg11_bn"), "classifier", 512 * 7 * 7), (3, 32, 32)),
    "alexnet": (lambda: small_classifier(tv("alexnet"), "classifier", 256 * 6 * 6), (3, 63, 63)),
    "googlenet": (lambda: tv("googlenet", init_weights=True), (3, 32, 32)),  # auxiliary heads in training
    "inception_v3": (lambda: tv("inception_v3", init_weights=True, aux_logits=False), (3, 75, 75)),
    "densenet121": (lambda: tv("densenet121"), (3, 32, 32)),
    "mobilenet_v2": (lambda: tv("mobilenet_v2"), (3, 32, 32)),
    "mobilenet_v3_small": (lambda: tv("mobilenet_v3_small"), (3, 32, 32)),
    "efficientnet_b0": (lambda: tv("efficientnet_b0"), (3, 48, 48)),
    "regnet_y_400mf": (lambda: tv("regnet_y_400mf"), (3, 48, 48)),
    "squeezenet1_1": (lambda: tv("squeezenet1_1"), (3, 33, 33)),
    "shufflenet_v2_x0_5": (lambda: tv("shufflenet_v2_x0_5"), (3, 32, 32)),
}
FLOAT32_MODELS = {"resnet18": 64, "densenet121": 64, "mobilenet_v2": 64, "efficientnet_b0": 64}


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_matches_native(name):
    build, size = MODELS[name]
    torch.manual_seed(0)
    _, worst = check_equivalent(build(), size)
    if os.environ.get("PYCNN_CONVERT_REPORT"):
        print(f"\n{name} float64: worst error / magnitude {worst:.1e}")


@pytest.mark.parametrize("name", list(FLOAT32_MODELS))
def test_torchvision_model_matches_native_float32_eval(name):
    build, _ = MODELS[name]
    side = FLOAT32_MODELS[name]
    torch.manual_seed(0)
    _, worst = check_equivalent(build(), (3, side, side), modes=("eval",), rtol=RTOL32, atol=ATOL32,
                                dtype=torch.float32, gradients=False)
    if os.environ.get("PYCNN_CONVERT_REPORT"):
        print(f"\n{name} float32 eval: worst error / magnitude {worst:.1e}")


def test_inception_auxiliary_head():
    # Inception v3's auxiliary head (F.avg_pool2d and F.adaptive_avg_pool2d in its forward) needs a 17x17
    # map, i.e. a 299x299 model input: tested on its own at that map size.
    head = torchvision.models.inception.InceptionAux(768, 10)
    check_equivalent(head, (768, 17, 17))
    # and the whole model at 299x299 in eval mode, float32, forward only.
    torch.manual_seed(0)
    native = tv("inception_v3", init_weights=True).eval()
    randomise_batch_norm(native)
    converted = pycnn.convert(native)
    x = torch.randn(1, 3, 299, 299)
    with Recorder() as recorder, torch.no_grad():
        got = converted(x)
    assert not [o for o in recorder.ops if forbidden(o)]
    with torch.no_grad():
        assert_close_scaled(got, native(x), "inception_v3 299x299", RTOL32, ATOL32)


def test_converted_model_keeps_classes_parameters_and_modes():
    torch.manual_seed(0)
    native = tv("resnet18").double().eval()
    params = dict(native.named_parameters())
    converted = pycnn.convert(native)
    assert isinstance(converted, torchvision.models.ResNet) and not converted.training
    assert type(converted.conv1) is pycnn.nn.Conv2d and type(converted.bn1) is pycnn.nn.BatchNorm2d
    assert type(converted.maxpool) is pycnn.nn.MaxPool2d and type(converted.avgpool) is pycnn.nn.AdaptiveAvgPool2d
    assert type(native.conv1) is nn.Conv2d  # a copy by default
    assert converted.state_dict().keys() == native.state_dict().keys()
    for name, p in converted.named_parameters():
        assert p.dtype == torch.float64 and torch.equal(p, params[name]) and p is not params[name]
    # inplace: the very parameter objects, so an optimizer built before keeps working.
    same = pycnn.convert(native, inplace=True)
    assert same is native and all(p is params[n] for n, p in same.named_parameters())
    assert type(native.layer1[0].conv1) is pycnn.nn.Conv2d
    # A layer as the model: its twin.
    bn = nn.BatchNorm1d(4, momentum=None, affine=False).train()
    twin = pycnn.convert(bn, inplace=True)
    assert type(twin) is pycnn.nn.BatchNorm1d and twin.momentum is None and twin.training
    x = torch.randn(5, 4)
    torch.testing.assert_close(twin(x), nn.BatchNorm1d(4, affine=False)(x))
    # Converting twice changes nothing.
    again = pycnn.convert(converted, inplace=True)
    assert again is converted and type(again.conv1) is pycnn.nn.Conv2d


class Mixed(nn.Module):
    """A user model calling torch.nn.functional, torch.* and nn.functional in its forward, with
    Conv2d padding modes and padding='same'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect")
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=2)
        self.bn = nn.BatchNorm2d(4)
        self.bn1d = nn.BatchNorm1d(4)
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.2)

    def forward(self, x):
        x = self.bn(self.conv2(self.conv(x)))
        x = F.conv2d(x, self.weight, None, 1, 1)
        x = F.max_pool2d(x, 2, ceil_mode=True)
        y, _ = F.max_pool2d(x, kernel_size=(2, 2), stride=1, return_indices=True)
        x = F.avg_pool2d(x, 2, 1) + torch.max_pool2d(y, 1)
        x = torch.nn.functional.batch_norm(x, None, None, training=True)
        x = nn.functional.adaptive_avg_pool2d(x, (1, None))
        return self.bn1d(torch.flatten(x, 2).mean(2))


def test_user_model_with_functional_calls_and_padding_modes():
    torch.manual_seed(0)
    converted, _ = check_equivalent(Mixed(), (3, 9, 9))
    check_equivalent(Mixed(), (3, 9, 9), rtol=RTOL32, atol=ATOL32, dtype=torch.float32, gradients=False)
    assert type(converted).__mro__[1] is Mixed and isinstance(converted, Mixed)
    assert type(converted.conv) is pycnn.nn.Conv2d


class StandardisedConv(nn.Conv2d):
    """A subclass with its own forward: not taken (convert replaces the torch.nn classes themselves)."""

    def forward(self, x):
        w = self.weight - self.weight.mean((1, 2, 3), keepdim=True)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_strict_names_each_layer_it_cannot_take():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(StandardisedConv(4, 4, 3), nn.LazyConv2d(4, 1)),
                          nn.Conv2d(4, 4, 1).to(torch.bfloat16), nn.Conv3d(4, 4, 1))
    with pytest.raises(ConversionError) as error:
        pycnn.convert(model, strict=True)
    names = [name for name, _ in error.value.layers]
    assert names == ["1.0", "1.1", "2"]  # the Conv3d is out of pycnn's scope, not reported
    message = str(error.value)
    assert "1.0: tests.test_convert.StandardisedConv subclasses torch.nn.Conv2d" in message or \
        "StandardisedConv subclasses torch.nn.Conv2d" in message
    assert "LazyConv2d is lazy" in message and "torch.bfloat16 parameter on the CPU" in message
    assert type(model[0]) is nn.Conv2d  # strict converts nothing when it raises
    # Not strict: the others are converted, these stay native, one warning lists them.
    with pytest.warns(UserWarning, match=r"3 layer\(s\) left native: 1\.0: .*; 1\.1: .*; 2: "):
        converted = pycnn.convert(model)
    assert type(converted[0]) is pycnn.nn.Conv2d and type(converted[1][0]).__mro__[1] is StandardisedConv
    assert type(converted[2]) is nn.Conv2d and type(converted[3]) is nn.Conv3d
    # The subclass's own F.conv2d call is redirected all the same.
    x = torch.randn(1, 4, 6, 6)
    with Recorder() as recorder:
        converted[1][0](x)
    assert "pycnn.corr2d" in recorder.ops and not [o for o in recorder.ops if forbidden(o)]
    # After its first forward, a lazy layer is a torch.nn.Conv2d, and converts.
    model[1][1](torch.randn(2, 4, 3, 3))
    assert type(model[1][1]) is nn.Conv2d
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pycnn.convert(nn.Sequential(model[1][1], model[0]), strict=True)
    with pytest.raises(TypeError, match="ScriptModule"):
        pycnn.convert(torch.jit.script(nn.Conv2d(1, 1, 1)))


@pytest.mark.parametrize("name, size", [("resnet18", 32), ("inception_v3", 75), ("densenet121", 32),
                                        ("mobilenet_v2", 32)])
def test_torchscript(name, size):
    torch.manual_seed(0)
    kwargs = {"init_weights": True} if name == "inception_v3" else {}
    native = tv(name, **kwargs).eval()
    randomise_batch_norm(native)
    converted = pycnn.convert(native)
    x = torch.randn(2, 3, size, size)
    expected = native(x)
    scripted = torch.jit.script(converted)
    traced = torch.jit.trace(converted, (x,), check_trace=False)
    for compiled in (scripted, traced):
        graph = compiled.inlined_graph
        kinds = {node.kind() for node in graph.nodes()}
        assert any(k.startswith("pycnn::") for k in kinds), kinds
        assert not [k for k in kinds if forbidden(k.replace("aten::", ""))], kinds
        got = compiled(x)
        got = got[0] if isinstance(got, tuple) else got  # scripted Inception3 returns its tuple
        assert_close_scaled(got, expected, "scripted", RTOL32, ATOL32)


def onnx_export(model, x, path):
    import pycnn.onnx
    torch.onnx.export(model, (x,), str(path), dynamo=True, custom_translation_table=pycnn.onnx.translation_table(),
                      input_names=["input"], output_names=["logits"], verbose=False)


@pytest.mark.parametrize("name, size", [("resnet18", 32), ("densenet121", 32), ("inception_v3", 75)])
def test_onnx_export(name, size, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    kwargs = {"init_weights": True, "aux_logits": False} if name == "inception_v3" else {}
    native = tv(name, **kwargs).eval()
    randomise_batch_norm(native)
    converted = pycnn.convert(native)
    x = torch.randn(2, 3, size, size)
    path = tmp_path / f"{name}.onnx"
    onnx_export(converted, x, path)
    proto = onnx.load(str(path))
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert not proto.functions
    assert "Conv" in {n.op_type for n in proto.graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    assert_close_scaled(torch.from_numpy(got), native(x).detach(), "onnxruntime", RTOL32, ATOL32)
