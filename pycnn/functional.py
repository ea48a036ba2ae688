"""A drop-in for the CNN functions of ``torch.nn.functional``, on pycnn's kernels.

Same signatures, defaults and semantics as torch.nn.functional: conv2d,
max_pool2d, avg_pool2d, adaptive_avg_pool2d and batch_norm, batched
(N, C, H, W) or unbatched (C, H, W). Each public function normalises its
arguments and calls a TorchScript-compatible core (the ``_..`` functions with
``List[int]`` arguments), which pycnn.nn's modules call directly.

A core calls its operator as ``torch.ops.pycnn.<op>`` where that is traced or
compiled (torch.compile, torch.export, TorchScript) and, in eager mode, as
``pycnn._C.<op>``: the same operator with the same arguments, whose Python
arguments are parsed in C++ (csrc/eager_entry.cpp), a few µs a call less
than torch.ops' generic parsing (BENCHMARKS.md). Any call that entry does not
take (a __torch_function__ tensor or mode, ...) it hands to torch.ops.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pycnn import _C

ops = torch.ops.pycnn

__all__ = ["conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm"]


def _pair(value, name: str) -> List[int]:
    """An int or a sequence of one or two ints, as torch.nn.functional accepts them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (1, 2):
        items = [int(v) for v in value]
        return items * 2 if len(items) == 1 else items
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_rank(function: str, input: Tensor) -> None:
    if input.dim() not in (3, 4):
        raise ValueError(
            f"{function}: expected input of rank 3 (C, H, W) or 4 (N, C, H, W), got rank {input.dim()} "
            f"with shape {tuple(input.shape)}"
        )


# --- TorchScript-compatible cores ---------------------------------------------
# Each calls torch.ops.pycnn.<op> when it is scripted (TorchScript compiles
# only that branch of `torch.jit.is_scripting() or ...`), compiled or exported
# (torch.compile reads is_compiling() as a constant), and pycnn._C.<op>
# otherwise. The condition is written out in each core: behind a helper
# function, TorchScript would compile both branches.


def _corr2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
) -> Tensor:
    batched = input.unsqueeze(0) if input.dim() == 3 else input
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        output = ops.corr2d(batched, weight, bias, stride, padding, dilation, groups)
    else:
        output = _C.corr2d(batched, weight, bias, stride, padding, dilation, groups)
    return output.squeeze(0) if input.dim() == 3 else output


def _max_pool2d(
    input: Tensor, kernel_size: List[int], stride: List[int], padding: List[int], dilation: List[int], ceil_mode: bool
) -> Tuple[Tensor, Tensor]:
    batched = input.unsqueeze(0) if input.dim() == 3 else input
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        output, indices = ops.max_pool2d(batched, kernel_size, stride, padding, dilation, ceil_mode)
    else:
        output, indices = _C.max_pool2d(batched, kernel_size, stride, padding, dilation, ceil_mode)
    if input.dim() == 3:
        return output.squeeze(0), indices.squeeze(0)
    return output, indices


def _avg_pool2d(
    input: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Optional[int],
) -> Tensor:
    batched = input.unsqueeze(0) if input.dim() == 3 else input
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        output = ops.avg_pool2d(batched, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    else:
        output = _C.avg_pool2d(batched, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    return output.squeeze(0) if input.dim() == 3 else output


def _adaptive_avg_pool2d(input: Tensor, output_size: List[int]) -> Tensor:
    batched = input.unsqueeze(0) if input.dim() == 3 else input
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        output = ops.adaptive_avg_pool2d(batched, output_size)
    else:
        output = _C.adaptive_avg_pool2d(batched, output_size)
    return output.squeeze(0) if input.dim() == 3 else output


def _batch_norm(
    input: Tensor,
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    if not training and (running_mean is None or running_var is None):
        # As torch.nn.functional (the operator itself would use batch statistics).
        raise RuntimeError(
            f"{'running_mean' if running_mean is None else 'running_var'} must be defined in evaluation mode"
        )
    if training:
        # As torch.nn.functional: batch statistics of a single value are meaningless.
        values_per_channel = input.size(0)
        for size in input.shape[2:]:
            values_per_channel *= size
        if values_per_channel == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(input.shape)}"
            )
    if torch.jit.is_scripting() or torch.compiler.is_compiling():
        output, _, _, new_running_mean, new_running_var = ops.batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps
        )
    else:
        output, _, _, new_running_mean, new_running_var = _C.batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps
        )
    if training and running_mean is not None and running_var is not None:
        # In place, as torch.nn.functional.batch_norm updates them. The new
        # values are not differentiable; only statistics that require grad
        # (a leaf may not be written in place while grad mode records) need
        # torch.no_grad(), whose context costs about 10 µs a call on the
        # slower CPU VMs (BENCHMARKS.md).
        if (
            running_mean.requires_grad
            or running_var.requires_grad
            or new_running_mean.requires_grad
            or new_running_var.requires_grad
        ):
            with torch.no_grad():
                running_mean.copy_(new_running_mean)
                running_var.copy_(new_running_var)
        else:
            running_mean.copy_(new_running_mean)
            running_var.copy_(new_running_var)
    return output


# --- torch.nn.functional drop-ins ---------------------------------------------


def _same_padding(kernel_size: List[int], dilation: List[int]) -> List[int]:
    """Total padding per spatial dimension that keeps the size for stride 1."""
    return [d * (k - 1) for k, d in zip(kernel_size, dilation)]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """2-D cross-correlation, as torch.nn.functional.conv2d (padding may be 'same' or 'valid')."""
    _check_rank("conv2d", input)
    stride = _pair(stride, "stride")
    dilation = _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0, 0]
        elif padding == "same":
            if stride != [1, 1]:
                raise ValueError("conv2d: padding='same' is not supported for strided convolutions")
            total = _same_padding(list(weight.shape[2:]), dilation)
            # An odd total pads one more on the bottom/right, as PyTorch does.
            if total[0] % 2 or total[1] % 2:
                input = F.pad(input, [0, total[1] % 2, 0, total[0] % 2])
            padding = [total[0] // 2, total[1] // 2]
        else:
            raise ValueError(f"conv2d: padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
    else:
        padding = _pair(padding, "padding")
    return _corr2d(input, weight, bias, stride, padding, dilation, groups)


def _pool_stride(stride, kernel_size: List[int]) -> List[int]:
    # torch.nn.functional treats a missing (None or empty) stride as kernel_size.
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        return kernel_size
    return _pair(stride, "stride")


def max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """2-D max pooling, as torch.nn.functional.max_pool2d; indices are flat per (C) plane."""
    _check_rank("max_pool2d", input)
    kernel_size = _pair(kernel_size, "kernel_size")
    output, indices = _max_pool2d(
        input,
        kernel_size,
        _pool_stride(stride, kernel_size),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
        bool(ceil_mode),
    )
    return (output, indices) if return_indices else output


def avg_pool2d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
) -> Tensor:
    """2-D average pooling, as torch.nn.functional.avg_pool2d."""
    _check_rank("avg_pool2d", input)
    kernel_size = _pair(kernel_size, "kernel_size")
    return _avg_pool2d(
        input,
        kernel_size,
        _pool_stride(stride, kernel_size),
        _pair(padding, "padding"),
        bool(ceil_mode),
        bool(count_include_pad),
        divisor_override,
    )


def _resolve_adaptive_size(input: Tensor, output_size) -> List[int]:
    """output_size as a pair of ints; a None entry keeps that input size, as native."""
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        return [output_size, output_size]
    if isinstance(output_size, (tuple, list, torch.Size)) and len(output_size) == 2:
        return [int(input.shape[-2 + i]) if s is None else int(s) for i, s in enumerate(output_size)]
    raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")


def adaptive_avg_pool2d(input, output_size) -> Tensor:
    """Adaptive 2-D average pooling, as torch.nn.functional.adaptive_avg_pool2d."""
    _check_rank("adaptive_avg_pool2d", input)
    return _adaptive_avg_pool2d(input, _resolve_adaptive_size(input, output_size))


def batch_norm(
    input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5
) -> Tensor:
    """Batch normalisation, as torch.nn.functional.batch_norm: in training mode it
    normalises with the batch statistics and updates running_mean/running_var in place."""
    if input.dim() == 1 and input.numel() == 0:
        # As torch.nn.functional: an empty 1-D batch has nothing to normalise.
        return input.clone()
    if input.dim() < 2:
        raise ValueError(f"batch_norm: expected input of rank >= 2 (N, C, ...), got shape {tuple(input.shape)}")
    return _batch_norm(input, running_mean, running_var, weight, bias, bool(training), float(momentum), float(eps))
