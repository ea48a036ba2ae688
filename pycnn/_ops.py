"""Fake kernels and autograd formulas of the pycnn operators.

The compiled library (csrc/) defines the schemas and the CPU/CUDA kernels.
Here, each operator gets a fake kernel -- the output's shape and dtype without
computing it, so torch.export, torch.compile and the ONNX exporter can trace
it -- and its autocast rule. Derivatives are in pycnn/_autograd.py, vmap's
batching rules in pycnn/_vmap.py.
The shape arithmetic mirrors csrc/include/pycnn/window.h and works on
symbolic sizes (a dynamic batch dimension).
"""
import torch
from torch._prims_common import suggest_memory_format

ops = torch.ops.pycnn


def _corr2d_output_size(size, kernel, padding, stride, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pooling_output_size(size, kernel, padding, stride, dilation, ceil_mode):
    out = (size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    # ceil_mode may add a window, but never one that starts past the input
    # and its left padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _accumulation_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# --- fake kernels -------------------------------------------------------------
# Outputs take the memory format of the tensor they follow, as the kernels'
# (and native's) do: channels_last in, channels_last out.


def _like(tensor, shape, dtype=None):
    return torch.empty(shape, dtype=dtype or tensor.dtype, device=tensor.device,
                       memory_format=suggest_memory_format(tensor))



@torch.library.register_fake("pycnn::corr2d")
def _corr2d_fake(input, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = input.shape
    out_h = _corr2d_output_size(h, weight.shape[2], padding[0], stride[0], dilation[0])
    out_w = _corr2d_output_size(w, weight.shape[3], padding[1], stride[1], dilation[1])
    return _like(input, (n, weight.shape[0], out_h, out_w))


@torch.library.register_fake("pycnn::corr2d_backward_input")
def _corr2d_backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    return _like(grad_output, input_size)


@torch.library.register_fake("pycnn::corr2d_backward_weight")
def _corr2d_backward_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups,
                                 output_mask=(True, True)):
    # An output that output_mask does not ask for is an empty (0,) tensor.
    grad_weight = grad_output.new_empty(weight_size if output_mask[0] else (0,))
    grad_bias = grad_output.new_empty((weight_size[0],) if output_mask[1] else (0,))
    return grad_weight, grad_bias


@torch.library.register_fake("pycnn::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    n, c, h, w = input.shape
    out_h = _pooling_output_size(h, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    out_w = _pooling_output_size(w, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    return _like(input, (n, c, out_h, out_w)), _like(input, (n, c, out_h, out_w), dtype=torch.int64)


@torch.library.register_fake("pycnn::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    return _like(input, input.shape)


@torch.library.register_fake("pycnn::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n, c, h, w = input.shape
    out_h = _pooling_output_size(h, kernel_size[0], padding[0], stride[0], 1, ceil_mode)
    out_w = _pooling_output_size(w, kernel_size[1], padding[1], stride[1], 1, ceil_mode)
    return _like(input, (n, c, out_h, out_w))


@torch.library.register_fake("pycnn::avg_pool2d_backward")
def _avg_pool2d_backward_fake(
    grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    return _like(input, input.shape)


@torch.library.register_fake("pycnn::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    n, c = input.shape[:2]
    return _like(input, (n, c, output_size[0], output_size[1]))


@torch.library.register_fake("pycnn::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    return _like(input, input.shape)


@torch.library.register_fake("pycnn::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, momentum, eps):
    channels = input.shape[1]
    stats_dtype = _accumulation_dtype(input.dtype)
    # Running statistics keep their dtype (float32 beside a float16 input: mixed precision).
    running = input.new_empty((0,)) if running_mean is None else running_mean.new_empty((channels,))
    return (
        _like(input, input.shape),
        input.new_empty((channels,), dtype=stats_dtype),
        input.new_empty((channels,), dtype=stats_dtype),
        running,
        running.new_empty(running.shape),
    )


@torch.library.register_fake("pycnn::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, weight, save_mean, save_invstd, used_batch_stats):
    channels = input.shape[1]
    parameters = input if weight is None else weight  # grad_weight and grad_bias in the weight's dtype
    return _like(input, input.shape), parameters.new_empty((channels,)), parameters.new_empty((channels,))


# --- autocast -------------------------------------------------------------------
# Under torch.autocast, as for native layers: corr2d runs in the region's dtype
# (float16 or bfloat16 on CUDA, bfloat16 by default on the CPU; its inputs
# cast, like aten::conv2d). batch_norm and the poolings have no rule, as
# native: they run in the dtype they receive, batch_norm with its float32
# parameters and running statistics (mixed precision). (torch.library's own
# register_autocast casts to one fixed dtype, which would run a bfloat16
# region's convolutions in float16.)


def _register_autocast(name, device_type):
    """Casts every floating-point tensor argument on device_type to the autocast
    region's dtype, then runs the operator below autocast."""
    op = getattr(ops, name).default
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    dispatch_key = getattr(torch._C.DispatchKey, key)

    def cast(value, to):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == device_type:
            return value.to(to)
        return value

    def autocast(*args):
        to = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            return op(*(cast(a, to) for a in args))

    op.py_impl(dispatch_key)(autocast)  # for the Python dispatcher (torch.compile, torch.export)
    _LIB.impl(name, autocast, key)


_LIB = torch.library.Library("pycnn", "IMPL")
_register_autocast("corr2d", "cuda")
_register_autocast("corr2d", "cpu")
