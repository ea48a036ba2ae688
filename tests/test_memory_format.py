"""Memory format: outputs and input gradients follow native's rule
(channels_last in, channels_last out), with native's values, forward and
backward, whatever layout the incoming gradient has."""

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_scaled, distinct_values

CL = torch.channels_last


def _layout(t):
    if t.is_contiguous():
        return "contiguous"
    return "channels_last" if t.is_contiguous(memory_format=CL) else "other"


def _layer(PF, name):
    w = torch.randn(6, 19, 3, 2, dtype=torch.float64)
    return {
        "conv2d": (lambda m: lambda x: m.conv2d(x, w.to(x.device), padding=1, stride=(2, 1))),
        "max_pool2d": (lambda m: lambda x: m.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
        "avg_pool2d": (lambda m: lambda x: m.avg_pool2d(x, (3, 2), 2, 1, count_include_pad=False)),
        "adaptive_avg_pool2d": (lambda m: lambda x: m.adaptive_avg_pool2d(x, (3, 4))),
        "batch_norm_train": (lambda m: lambda x: m.batch_norm(
            x, None, None, torch.linspace(0.5, 2, 19, dtype=x.dtype, device=x.device), None, training=True)),
        "batch_norm_eval": (lambda m: lambda x: m.batch_norm(
            x, torch.linspace(-1, 1, 19, dtype=x.dtype, device=x.device),
            torch.linspace(0.5, 2, 19, dtype=x.dtype, device=x.device), training=False)),
    }[name]


LAYERS = ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm_train", "batch_norm_eval"]


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("input_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "channels_last"])
def test_layouts_follow_native(PF, name, input_layout, grad_layout, device):
    # 19 channels: more than one block of the channels_last batch-norm kernel, and not a multiple of it.
    base = distinct_values((3, 19, 9, 8), torch.float64, device)
    make = _layer(PF, name)
    results = []
    for module in (PF, F):
        x = base.clone()
        if input_layout == "channels_last":
            x = x.contiguous(memory_format=CL)
        x.requires_grad_()
        out = make(module)(x)
        grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).view(out.shape)
        grad = grad.contiguous(memory_format=CL) if grad_layout == "channels_last" else grad.contiguous()
        out.backward(grad)
        results.append((out, x.grad))
    (out, grad_input), (native_out, native_grad_input) = results
    assert _layout(out) == _layout(native_out), "output"
    assert _layout(grad_input) == _layout(native_grad_input), "grad_input"
    assert_close_scaled(out, native_out, torch.float64, "conv")
    assert_close_scaled(grad_input, native_grad_input, torch.float64, "conv")


def test_max_pool2d_indices_follow_the_input(PF, device):
    x = distinct_values((2, 5, 7, 6), torch.float64, device).contiguous(memory_format=CL)
    out, indices = PF.max_pool2d(x, 2, return_indices=True)
    native_out, native_indices = F.max_pool2d(x, 2, return_indices=True)
    assert _layout(indices) == _layout(native_indices) == "channels_last"
    assert torch.equal(indices, native_indices) and torch.equal(out, native_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_channels_last_network(PN, dtype, device):
    """A whole channels_last network stays channels_last, layer by layer, as the native one does."""
    def build(layers):
        torch.manual_seed(0)
        return torch.nn.Sequential(layers.Conv2d(3, 20, 3, padding=1), layers.BatchNorm2d(20), torch.nn.ReLU(),
                                   layers.MaxPool2d(2), layers.Conv2d(20, 8, 1), layers.AvgPool2d(2),
                                   layers.AdaptiveAvgPool2d(1)).to(device=device, dtype=dtype, memory_format=CL)

    x = torch.randn(4, 3, 16, 16, device=device, dtype=dtype).contiguous(memory_format=CL)
    outputs = []
    for layers in (PN, torch.nn):
        steps, y = [], x
        for layer in build(layers):
            y = layer(y)
            steps.append(y)
        outputs.append(steps)
    for i, (ours, native) in enumerate(zip(*outputs)):
        assert _layout(ours) == _layout(native), f"layer {i}"
        assert_close_scaled(ours, native, dtype, "conv", msg=f"layer {i}")
