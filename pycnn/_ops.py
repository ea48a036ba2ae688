"""Fake kernels and autocast rules of the pycnn operators, one block per operator.

The compiled library (csrc/) defines the schemas and the CPU/CUDA kernels.
Here, each operator gets a fake kernel -- the output's shape and dtype without
computing it, so torch.export, torch.compile and the ONNX exporter can trace
it -- and, where native has one, its autocast rule. Derivatives are in
pycnn/_autograd.py, vmap's batching rules in pycnn/_vmap.py; the three files
have the same sections, in the same order: corr2d, max_pool2d, avg_pool2d,
adaptive_avg_pool2d, batch_norm (each with its backward operators).

A fake kernel checks its arguments as the real kernels do
(csrc/include/pycnn/checks.h), in the same order and with the same messages,
so that a wrong call fails at trace time (FakeTensorMode, torch.compile,
torch.export) with the error eager gives. The shape arithmetic mirrors
csrc/include/pycnn/window.h and works on symbolic sizes (a dynamic batch
dimension).
"""
import torch
from torch._prims_common import suggest_memory_format

ops = torch.ops.pycnn
_LIB = torch.library.Library("pycnn", "IMPL")


# --- shared: window arithmetic, checks, outputs, autocast ---------------------


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
    return torch.float32 if dtype in _REDUCED_PRECISION else dtype


# The checks of checks.h, raising RuntimeError (what TORCH_CHECK raises in
# eager) with the text C++ prints: sizes and pairs as [a, b], dtypes by their
# ScalarType names (Float, Double, ...), devices as cpu / cuda:0.

_SCALAR_TYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
    torch.complex32: "ComplexHalf", torch.qint8: "QInt8", torch.quint8: "QUInt8", torch.qint32: "QInt32",
    torch.quint4x2: "QUInt4x2", torch.quint2x4: "QUInt2x4",
}
_REDUCED_PRECISION = (torch.float16, torch.bfloat16)
_FLOATING_DTYPES = (torch.float32, torch.float64, *_REDUCED_PRECISION)


def _dtype_name(dtype):
    if dtype in _SCALAR_TYPE_NAMES:
        return _SCALAR_TYPE_NAMES[dtype]
    name = str(dtype).replace("torch.", "")  # uint16 -> UInt16, float8_e4m3fn -> Float8_e4m3fn, ...
    return "UInt" + name[4:] if name.startswith("uint") else name[:1].upper() + name[1:]


def _sizes(values):
    return "[" + ", ".join(str(v) for v in values) + "]"


def _same_sizes(actual, expected):
    return len(actual) == len(expected) and all(a == b for a, b in zip(actual, expected))


def _check_pair(op, name, value, minimum):
    torch._check(len(value) == 2, lambda: f"{op}: {name} must have 2 elements, got {_sizes(value)}")
    torch._check(
        value[0] >= minimum and value[1] >= minimum,
        lambda: f"{op}: {name} must be >= {minimum} in both dimensions, got {_sizes(value)}",
    )


def _check_rank(op, name, tensor, rank, layout):
    torch._check(
        tensor.dim() == rank,
        lambda: f"{op}: expected {name} of rank {rank} {layout}, got rank {tensor.dim()} "
        f"with shape {_sizes(tensor.shape)}",
    )


def _check_same_dtype_device(op, reference, name, other, reference_name="input"):
    torch._check(
        other.device == reference.device,
        lambda: f"{op}: {name} is on {other.device} but {reference_name} is on {reference.device}; "
        "expected both on the same device",
    )
    torch._check(
        other.dtype == reference.dtype,
        lambda: f"{op}: {name} has dtype {_dtype_name(other.dtype)} but {reference_name} has dtype "
        f"{_dtype_name(reference.dtype)}; expected the same dtype",
    )


def _check_floating_dtype(op, input):
    torch._check(
        input.dtype in _FLOATING_DTYPES,
        lambda: f"{op}: input must be float32, float64, float16 or bfloat16, got {_dtype_name(input.dtype)}",
    )


def _check_spatial_output(op, input, out_h, out_w):
    torch._check(
        out_h >= 1 and out_w >= 1,
        lambda: f"{op}: the output size ({out_h}, {out_w}) is below 1: the (dilated) window does not fit in the "
        f"padded input of spatial size ({input.shape[2]}, {input.shape[3]})",
    )


def _check_pool_padding(op, kernel_size, padding):
    torch._check(
        padding[0] <= kernel_size[0] // 2 and padding[1] <= kernel_size[1] // 2,
        lambda: f"{op}: padding must be at most half the kernel size, got padding {_sizes(padding)} "
        f"for kernel_size {_sizes(kernel_size)}",
    )


def _check_grad_output(op, grad_output, input, expected):
    """The gradient of an operator's output has exactly the output's shape."""
    _check_same_dtype_device(op, input, "grad_output", grad_output)
    torch._check(
        _same_sizes(grad_output.shape, expected),
        lambda: f"{op}: grad_output must have shape {_sizes(expected)}, got {_sizes(grad_output.shape)}",
    )


# Outputs take the memory format of the tensor they follow, as the kernels'
# (and native's) do: channels_last in, channels_last out.


def _like(tensor, shape, dtype=None):
    return torch.empty(shape, dtype=dtype or tensor.dtype, device=tensor.device,
                       memory_format=suggest_memory_format(tensor))


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


# --- corr2d -------------------------------------------------------------------
# corr2d_geometry, corr2d_output_shape and check_corr2d_backward of checks.h.


def _corr2d_geometry(op, input_size, weight_size, stride, padding, dilation, groups):
    """Ranks, channels against weight and groups, stride/padding/dilation and an
    output of at least 1x1, from the sizes alone; returns the output shape."""
    torch._check(
        len(input_size) == 4,
        lambda: f"{op}: expected input of rank 4 (N, C, H, W), got rank {len(input_size)} "
        f"with shape {_sizes(input_size)}",
    )
    torch._check(
        len(weight_size) == 4,
        lambda: f"{op}: expected weight of rank 4 (out_channels, in_channels / groups, kH, kW), got rank "
        f"{len(weight_size)} with shape {_sizes(weight_size)}",
    )
    _check_pair(op, "stride", stride, 1)
    _check_pair(op, "padding", padding, 0)
    _check_pair(op, "dilation", dilation, 1)
    torch._check(groups >= 1, lambda: f"{op}: groups must be >= 1, got {groups}")
    out_channels = weight_size[0]
    torch._check(
        out_channels >= 1 and out_channels % groups == 0,
        lambda: f"{op}: weight.size(0) (out_channels = {out_channels}) must be a positive multiple of "
        f"groups = {groups}",
    )
    torch._check(
        weight_size[2] >= 1 and weight_size[3] >= 1,
        lambda: f"{op}: kernel size (weight.size(2), weight.size(3)) must be >= 1, "
        f"got ({weight_size[2]}, {weight_size[3]})",
    )
    torch._check(
        input_size[1] == weight_size[1] * groups,
        lambda: f"{op}: input has {input_size[1]} channels but weight expects in_channels = weight.size(1) * groups = "
        f"{weight_size[1]} * {groups} = {weight_size[1] * groups}",
    )
    out_h = _corr2d_output_size(input_size[2], weight_size[2], padding[0], stride[0], dilation[0])
    out_w = _corr2d_output_size(input_size[3], weight_size[3], padding[1], stride[1], dilation[1])
    torch._check(
        out_h >= 1 and out_w >= 1,
        lambda: f"{op}: the output size ({out_h}, {out_w}) is below 1: the (dilated) kernel does not fit in the padded "
        f"input of spatial size ({input_size[2]}, {input_size[3]})",
    )
    return [input_size[0], out_channels, out_h, out_w]


def _check_corr2d_backward(
    op, grad_output, other, other_name, input_size, weight_size, stride, padding, dilation, groups
):
    """`other` is the weight or the input that comes with grad_output."""
    output_shape = _corr2d_geometry(op, input_size, weight_size, stride, padding, dilation, groups)
    _check_floating_dtype(op, other)
    _check_same_dtype_device(op, other, "grad_output", grad_output, other_name)
    torch._check(
        _same_sizes(grad_output.shape, output_shape),
        lambda: f"{op}: grad_output must have shape {_sizes(output_shape)}, got {_sizes(grad_output.shape)}",
    )


@torch.library.register_fake("pycnn::corr2d")
def _corr2d_fake(input, weight, bias, stride, padding, dilation, groups):
    op = "pycnn.corr2d"
    output_shape = _corr2d_geometry(op, input.shape, weight.shape, stride, padding, dilation, groups)
    _check_floating_dtype(op, input)
    _check_same_dtype_device(op, input, "weight", weight)
    if bias is not None:
        _check_same_dtype_device(op, input, "bias", bias)
        torch._check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: f"{op}: bias must have shape ({weight.shape[0]},) = (out_channels,), got {_sizes(bias.shape)}",
        )
    return _like(input, output_shape)


@torch.library.register_fake("pycnn::corr2d_backward_input")
def _corr2d_backward_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    _check_corr2d_backward(
        "pycnn.corr2d_backward_input", grad_output, weight, "weight", input_size, weight.shape, stride, padding,
        dilation, groups,
    )
    return _like(grad_output, input_size)


@torch.library.register_fake("pycnn::corr2d_backward_weight")
def _corr2d_backward_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups,
                                 output_mask=(True, True)):
    _check_corr2d_backward(
        "pycnn.corr2d_backward_weight", grad_output, input, "input", input.shape, weight_size, stride, padding,
        dilation, groups,
    )
    # An output that output_mask does not ask for is an empty (0,) tensor.
    grad_weight = grad_output.new_empty(weight_size if output_mask[0] else (0,))
    grad_bias = grad_output.new_empty((weight_size[0],) if output_mask[1] else (0,))
    return grad_weight, grad_bias


_register_autocast("corr2d", "cuda")
_register_autocast("corr2d", "cpu")


# --- max_pool2d ---------------------------------------------------------------
# No autocast rule (as native).


def _max_pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode):
    op = "pycnn.max_pool2d"
    _check_rank(op, "input", input, 4, "(N, C, H, W)")
    _check_floating_dtype(op, input)
    _check_pair(op, "kernel_size", kernel_size, 1)
    _check_pair(op, "stride", stride, 1)
    _check_pair(op, "padding", padding, 0)
    _check_pair(op, "dilation", dilation, 1)
    _check_pool_padding(op, kernel_size, padding)
    n, c, h, w = input.shape
    out_h = _pooling_output_size(h, kernel_size[0], padding[0], stride[0], dilation[0], ceil_mode)
    out_w = _pooling_output_size(w, kernel_size[1], padding[1], stride[1], dilation[1], ceil_mode)
    _check_spatial_output(op, input, out_h, out_w)
    return [n, c, out_h, out_w]


@torch.library.register_fake("pycnn::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    output_shape = _max_pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _like(input, output_shape), _like(input, output_shape, dtype=torch.int64)


@torch.library.register_fake("pycnn::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, input, indices, kernel_size, stride, padding, dilation, ceil_mode):
    op = "pycnn.max_pool2d_backward"
    output_shape = _max_pool2d_output_shape(input, kernel_size, stride, padding, dilation, ceil_mode)
    _check_grad_output(op, grad_output, input, output_shape)
    torch._check(
        indices.dtype == torch.int64 and indices.device == input.device,
        lambda: f"{op}: indices must be int64 on the input's device, "
        f"got {_dtype_name(indices.dtype)} on {indices.device}",
    )
    torch._check(
        _same_sizes(indices.shape, output_shape),
        lambda: f"{op}: indices must have grad_output's shape {_sizes(output_shape)}, got {_sizes(indices.shape)}",
    )
    return _like(input, input.shape)


# --- avg_pool2d ---------------------------------------------------------------
# No autocast rule (as native).


def _avg_pool2d_output_shape(input, kernel_size, stride, padding, ceil_mode, divisor_override):
    op = "pycnn.avg_pool2d"
    _check_rank(op, "input", input, 4, "(N, C, H, W)")
    _check_floating_dtype(op, input)
    _check_pair(op, "kernel_size", kernel_size, 1)
    _check_pair(op, "stride", stride, 1)
    _check_pair(op, "padding", padding, 0)
    _check_pool_padding(op, kernel_size, padding)
    torch._check(
        divisor_override is None or divisor_override != 0, lambda: f"{op}: divisor_override must be non-zero, got 0"
    )
    n, c, h, w = input.shape
    out_h = _pooling_output_size(h, kernel_size[0], padding[0], stride[0], 1, ceil_mode)
    out_w = _pooling_output_size(w, kernel_size[1], padding[1], stride[1], 1, ceil_mode)
    _check_spatial_output(op, input, out_h, out_w)
    return [n, c, out_h, out_w]


@torch.library.register_fake("pycnn::avg_pool2d")
def _avg_pool2d_fake(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _like(input, _avg_pool2d_output_shape(input, kernel_size, stride, padding, ceil_mode, divisor_override))


@torch.library.register_fake("pycnn::avg_pool2d_backward")
def _avg_pool2d_backward_fake(
    grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    output_shape = _avg_pool2d_output_shape(input, kernel_size, stride, padding, ceil_mode, divisor_override)
    _check_grad_output("pycnn.avg_pool2d_backward", grad_output, input, output_shape)
    return _like(input, input.shape)


# --- adaptive_avg_pool2d ------------------------------------------------------
# No autocast rule (as native).


def _adaptive_avg_pool2d_output_shape(input, output_size):
    op = "pycnn.adaptive_avg_pool2d"
    _check_rank(op, "input", input, 4, "(N, C, H, W)")
    _check_floating_dtype(op, input)
    _check_pair(op, "output_size", output_size, 1)
    torch._check(
        input.shape[2] >= 1 and input.shape[3] >= 1,
        lambda: f"{op}: input spatial size must be >= 1, got {_sizes(input.shape)}",
    )
    return [input.shape[0], input.shape[1], output_size[0], output_size[1]]


@torch.library.register_fake("pycnn::adaptive_avg_pool2d")
def _adaptive_avg_pool2d_fake(input, output_size):
    return _like(input, _adaptive_avg_pool2d_output_shape(input, output_size))


@torch.library.register_fake("pycnn::adaptive_avg_pool2d_backward")
def _adaptive_avg_pool2d_backward_fake(grad_output, input):
    op = "pycnn.adaptive_avg_pool2d_backward"
    # The CPU and CUDA kernels word the rank check differently; each device's here.
    if "cuda" in (grad_output.device.type, input.device.type):
        _check_rank(op, "grad_output", grad_output, 4, "(N, C, OH, OW)")
    else:
        torch._check(
            grad_output.dim() == 4,
            lambda: f"{op}: expected grad_output of rank 4, got {_sizes(grad_output.shape)}",
        )
    output_shape = _adaptive_avg_pool2d_output_shape(input, [grad_output.shape[2], grad_output.shape[3]])
    _check_grad_output(op, grad_output, input, output_shape)
    return _like(input, input.shape)


# --- batch_norm ---------------------------------------------------------------
# No autocast rule (as native). check_batch_norm and check_batch_norm_backward
# of checks.h.


def _check_batch_norm_input(op, input):
    torch._check(
        2 <= input.dim() <= 4,
        lambda: f"{op}: expected input of rank 2 (N, C), 3 (N, C, L) or 4 (N, C, H, W), got rank {input.dim()} "
        f"with shape {_sizes(input.shape)}",
    )
    _check_floating_dtype(op, input)


def _check_channel_vectors(op, input, vectors):
    """The optional per-channel tensors (name, tensor or None): vectors of length C
    on the input's device, all of one dtype: the input's, or float32 with a
    float16 / bfloat16 input (mixed precision)."""
    dtype = first = None
    for name, vector in vectors:
        if vector is None:
            continue
        torch._check(
            vector.device == input.device,
            lambda: f"{op}: {name} is on {vector.device} but input is on {input.device}; "
            "expected both on the same device",
        )
        torch._check(
            vector.dtype == input.dtype or (vector.dtype == torch.float32 and input.dtype in _REDUCED_PRECISION),
            lambda: f"{op}: {name} has dtype {_dtype_name(vector.dtype)} but input has dtype "
            f"{_dtype_name(input.dtype)}; expected the same dtype (or float32 with a float16 or bfloat16 input)",
        )
        torch._check(
            dtype is None or dtype == vector.dtype,
            lambda: f"{op}: {name} has dtype {_dtype_name(vector.dtype)} but {first} has dtype {_dtype_name(dtype)}; "
            "expected weight, bias, running_mean and running_var in one dtype",
        )
        torch._check(
            vector.dim() == 1 and vector.shape[0] == input.shape[1],
            lambda: f"{op}: {name} must have shape ({input.shape[1]},) = (num_channels,), got {_sizes(vector.shape)}",
        )
        if dtype is None:
            dtype, first = vector.dtype, name


@torch.library.register_fake("pycnn::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, momentum, eps):
    op = "pycnn.batch_norm"
    _check_batch_norm_input(op, input)
    _check_channel_vectors(
        op, input, [("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)]
    )
    has_mean, has_var = running_mean is not None, running_var is not None
    torch._check(
        has_mean == has_var,
        lambda: f"{op}: running_mean and running_var must be given together, got running_mean "
        f"{'defined' if has_mean else 'None'} and running_var {'defined' if has_var else 'None'}",
    )
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
    op = "pycnn.batch_norm_backward"
    _check_batch_norm_input(op, input)
    _check_grad_output(op, grad_output, input, input.shape)
    _check_channel_vectors(op, input, [("weight", weight)])
    channels = input.shape[1]
    stats_dtype = _accumulation_dtype(input.dtype)
    for name, stat in (("save_mean", save_mean), ("save_invstd", save_invstd)):
        torch._check(
            stat.dim() == 1 and stat.shape[0] == channels and stat.device == input.device,
            lambda: f"{op}: {name} must have shape ({channels},) on the input's device, got {_sizes(stat.shape)} "
            f"on {stat.device}",
        )
        torch._check(
            stat.dtype == stats_dtype,
            lambda: f"{op}: {name} must have dtype {_dtype_name(stats_dtype)}, got {_dtype_name(stat.dtype)}",
        )
    parameters = input if weight is None else weight  # grad_weight and grad_bias in the weight's dtype
    return _like(input, input.shape), parameters.new_empty((channels,)), parameters.new_empty((channels,))
