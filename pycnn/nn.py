"""Drop-ins for torch.nn's CNN layers, computed by pycnn's kernels.

Each class subclasses its torch.nn counterpart, so it takes the same
constructor arguments, initialises its parameters the same way and has the
same state_dict keys (weights move both ways); only the computation is
pycnn's. The forwards are TorchScript-compatible.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from pycnn.functional import (
    _adaptive_avg_pool2d,
    _avg_pool2d,
    _batch_norm,
    _corr2d,
    _max_pool2d,
    _pair,
    _pool_stride,
)

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d"]


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d on pycnn.corr2d. Padding modes other than 'zeros', and
    padding='same' with an odd total, pad the input first (torch's F.pad), as
    torch.nn.Conv2d does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Resolved once: an explicit pre-pad (padding mode, or 'same') or symmetric zero padding for the kernel.
        self._pre_pad = self.padding_mode != "zeros" or isinstance(self.padding, str)
        self._corr2d_padding: List[int] = [0, 0] if self._pre_pad else [int(p) for p in self.padding]
        self._corr2d_stride: List[int] = [int(s) for s in self.stride]
        self._corr2d_dilation: List[int] = [int(d) for d in self.dilation]

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self._pre_pad:
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=mode)
        return _corr2d(
            input, weight, bias, self._corr2d_stride, self._corr2d_padding, self._corr2d_dilation, self.groups
        )


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d on pycnn.max_pool2d."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kernel: List[int] = _pair(self.kernel_size, "kernel_size")
        self._stride: List[int] = _pool_stride(self.stride, self._kernel)
        self._padding: List[int] = _pair(self.padding, "padding")
        self._dilation: List[int] = _pair(self.dilation, "dilation")

    def forward(self, input: Tensor):
        output, indices = _max_pool2d(input, self._kernel, self._stride, self._padding, self._dilation, self.ceil_mode)
        if self.return_indices:
            return output, indices
        return output


class AvgPool2d(torch.nn.AvgPool2d):
    """torch.nn.AvgPool2d on pycnn.avg_pool2d."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kernel: List[int] = _pair(self.kernel_size, "kernel_size")
        self._stride: List[int] = _pool_stride(self.stride, self._kernel)
        self._padding: List[int] = _pair(self.padding, "padding")

    def forward(self, input: Tensor) -> Tensor:
        return _avg_pool2d(
            input, self._kernel, self._stride, self._padding, self.ceil_mode, self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d on pycnn.adaptive_avg_pool2d; a None in
    output_size keeps that input size."""

    def __init__(self, output_size):
        super().__init__(output_size)
        size = [output_size, output_size] if isinstance(output_size, int) else list(output_size)
        if len(size) != 2:
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be an int or a pair, got {output_size!r}")
        # -1 marks "keep the input's size" (a None), resolved at each call.
        self._size: List[int] = [-1 if s is None else int(s) for s in size]

    def forward(self, input: Tensor) -> Tensor:
        size = [input.size(-2) if self._size[0] == -1 else self._size[0],
                input.size(-1) if self._size[1] == -1 else self._size[1]]
        return _adaptive_avg_pool2d(input, size)


class _BatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """The training/eval logic of torch.nn's batch-norm layers on pycnn.batch_norm:
    batch statistics while training (running statistics updated with momentum,
    or a cumulative average when momentum is None), running statistics in eval."""

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                average_factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Running statistics are read in eval and updated while training when tracked.
        track = not self.training or self.track_running_stats
        return _batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            average_factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on pycnn.batch_norm, for (N, C) and (N, C, L) input."""


class BatchNorm2d(_BatchNorm, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on pycnn.batch_norm, for (N, C, H, W) input."""
