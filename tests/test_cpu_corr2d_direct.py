"""corr2d's direct CPU loops (csrc/cpu/corr2d_direct.cpp): grouped
convolutions with at most 16 input channels per group (depthwise ones and
their relatives), and ungrouped stride-1 layers of at most 32 output channels
on maps of 12x12 to 112x112 -- and on smaller maps pass by pass, beside the
channels-last rows or im2col for the other passes (SMALL_MAP_CASES).

The loops split each padded input plane into stride_h x stride_w phase
planes, compute outputs in rows of the phases' pitch with scrap columns, run
the input's gradient as a gather over a zero margin and block outputs four,
two and one at a time. The cases below cross each of those: every stride
from 1 to 3 (and unequal ones), dilations that land taps in different phases,
padding larger than the kernel reach, 1x1 kernels with stride 2 (phases no
tap reads), channel multipliers 1 to 7 (blocks of 4 + 2 + 1), 1 to 16
channels per group and ungrouped layers, maps narrower than one vector, and
one sample split over 1 to 8 threads by blocks of channels. Each result is checked
against native in float64, forward and both gradients; float32 against
native float32.
"""
import pytest
import torch
import torch.nn.functional as F

import pycnn  # noqa: F401  (registers torch.ops.pycnn)

ops = torch.ops.pycnn

# (batch, channels, (H, W), out_channels, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 8, (12, 12), 8, (3, 3), (1, 1), (1, 1), (1, 1), 8),  # depthwise 3x3
    (3, 6, (13, 9), 6, (3, 3), (2, 2), (1, 1), (1, 1), 6),  # stride 2, odd sizes: four phases
    (2, 4, (11, 14), 4, (5, 5), (3, 3), (2, 2), (1, 1), 4),  # stride 3: nine phases
    (2, 4, (10, 11), 4, (3, 2), (1, 2), (0, 1), (1, 1), 4),  # unequal strides and kernel
    (2, 4, (12, 12), 4, (3, 3), (2, 2), (2, 2), (3, 1), 4),  # dilation 3 with stride 2: taps in both phases
    (2, 6, (9, 9), 6, (1, 1), (2, 2), (0, 0), (1, 1), 6),  # 1x1 stride 2: three phases without a tap
    (2, 3, (7, 7), 21, (3, 3), (1, 1), (1, 1), (1, 1), 3),  # multiplier 7: outputs in blocks of 4, 2 and 1
    (2, 4, (8, 8), 12, (3, 3), (1, 1), (1, 1), (2, 2), 2),  # two channels per group, 6 outputs per group
    (2, 12, (9, 10), 9, (3, 3), (1, 1), (1, 1), (1, 1), 3),  # four channels per group, 3 outputs each
    (2, 6, (5, 5), 6, (3, 3), (1, 1), (4, 4), (1, 1), 6),  # padding past the kernel's reach
    (1, 4, (3, 2), 8, (2, 2), (1, 1), (0, 0), (1, 1), 4),  # maps narrower than one vector
    (2, 4, (6, 6), 4, (7, 7), (1, 1), (3, 3), (1, 1), 4),  # a kernel larger than the map
    (2, 64, (12, 12), 64, (3, 3), (1, 1), (1, 1), (1, 1), 4),  # 16 channels per group
    (2, 40, (14, 14), 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # ungrouped, 32 outputs (DenseNet's layers)
    (2, 1, (28, 28), 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # ungrouped, one input channel (LeNet's first layer)
    (3, 8, (13, 12), 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # 20 outputs: weight blocks of 8, 8 and 4
]

# One sample of an ungrouped layer of at most 32 input channels: the
# forward's outputs and the input gradient's channels cut into blocks
# (multiples of 4), one a thread.
BATCH_1_CASES = [
    (1, 32, (14, 14), 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # even blocks; 32 inputs, the most it takes
    (1, 33, (14, 14), 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # 33 inputs: im2col on 2+ threads, direct on 1
    (1, 10, (12, 12), 30, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # 30 outputs: 16 + 14 on two threads; 10 inputs: 8 + 2
    (1, 3, (16, 15), 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # 6 outputs: 4 + 2; 3 inputs: one block
]

# Output maps under 12x12, where each pass picks its own path
# (use_direct_corr2d): the forward runs the loops (but on a 3x3 map at batch
# 64; with at most 16 outputs, before Winograd), the input's gradient for at
# most 16 outputs or under 8 inputs (or a batch smaller than the threads) where
# Winograd does not take it, the weight's gradient only under 8 inputs; the
# other passes run Winograd or the rows (float32) or im2col.
SMALL_MAP_CASES = [
    (8, 40, (5, 5), 10, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # NiN's last stage: forward direct, gradients Winograd
    (8, 24, (3, 3), 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # DenseNet's last stage: forward direct
    (64, 24, (3, 3), 32, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # ... at batch 64: none direct
    (4, 6, (12, 12), 16, (5, 5), (1, 1), (0, 0), (1, 1), 1),  # LeNet's 6 -> 16 (an 8x8 map): every pass direct
    (5, 6, (12, 12), 16, (5, 5), (1, 1), (0, 0), (1, 1), 1),  # ... batch 5: the weight's gradient 4 samples, then 1
    (1, 24, (6, 6), 20, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # batch 1: forward and input gradient direct
]


def _ids(case):
    n, c, hw, o, k, s, p, d, g = case
    return f"c{c}o{o}g{g}-{hw[0]}x{hw[1]}-k{k[0]}x{k[1]}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-d{d[0]}{d[1]}"


def _tensors(case, dtype):
    n, c, hw, o, k, *_, groups = case
    gen = torch.Generator().manual_seed(sum(map(hash, map(str, case))) % 2**31)
    x = torch.randn(n, c, *hw, generator=gen, dtype=dtype)
    w = torch.randn(o, c // groups, *k, generator=gen, dtype=dtype)
    b = torch.randn(o, generator=gen, dtype=dtype)
    return x, w, b


def _both(case, x, w, b):
    """(output, grad_input, grad_weight, grad_bias) of native and of pycnn's operators."""
    *_, stride, padding, dilation, groups = case
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    native = (y, *torch.ops.aten.convolution_backward(
        gy, x, w, [w.size(0)], stride, padding, dilation, False, [0, 0], groups, [True, True, True]))
    args = (list(stride), list(padding), list(dilation), groups)
    mine = (
        ops.corr2d(x, w, b, *args),
        ops.corr2d_backward_input(gy, w, list(x.shape), *args),
        *ops.corr2d_backward_weight(gy, x, list(w.shape), *args, [True, True]),
    )
    return native, mine


@pytest.mark.parametrize("case", CASES + SMALL_MAP_CASES, ids=_ids)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_direct_matches_native(case, dtype):
    native, mine = _both(case, *_tensors(case, dtype))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), native, mine):
        torch.testing.assert_close(b, a, **tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[7]], ids=_ids)
def test_direct_gradcheck(case):
    x, w, b = (t.requires_grad_() for t in _tensors(case, torch.float64))
    *_, stride, padding, dilation, groups = case
    f = lambda x, w, b: pycnn.functional.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6], *SMALL_MAP_CASES[3:5], SMALL_MAP_CASES[0]], ids=_ids)
@pytest.mark.parametrize("where", ["input", "weight"])
def test_direct_non_finite_values_stay_where_native_puts_them(case, where):
    """The scrap columns multiply by zero; an inf or NaN no real output reads
    must not become a NaN in a gradient that native leaves finite."""
    x, w, b = _tensors(case, torch.float64)
    if where == "input":
        x[0, 0, 1, 0] = float("inf")  # the first column: scrap columns of the row above wrap onto it
        x[-1, -1, -1, -1] = float("nan")
    else:
        w[0, 0, 0, -1] = float("inf")
        w[-1, 0, -1, 0] = float("nan")
    native, mine = _both(case, x, w, b)
    for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), native, mine):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, equal_nan=True, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("channels_per_group", [16, 17])
def test_either_side_of_the_direct_path(channels_per_group):
    """16 input channels per group run the direct loops, 17 im2col + GEMM: both agree with native."""
    groups = 3
    case = (2, channels_per_group * groups, (9, 9), 6, (3, 3), (1, 1), (1, 1), (1, 1), groups)
    native, mine = _both(case, *_tensors(case, torch.float64))
    for a, b in zip(native, mine):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("case", BATCH_1_CASES, ids=_ids)
def test_direct_batch_1_split_over_threads(case, threads):
    """Batch 1 on any number of threads (blocks of 4 to all of the channels) agrees with native."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native, mine = _both(case, *_tensors(case, torch.float64))
    finally:
        torch.set_num_threads(before)
    for name, a, b in zip(("output", "grad_input", "grad_weight", "grad_bias"), native, mine):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
