"""corr2d's channels-last rows on the CPU (csrc/cpu/corr2d_rows.cpp,
use_rows_corr2d): float32, ungrouped layers other than plain 1x1 ones, with
at least 8 input channels, at most 128 output channels and an output map of
fewer than 128 positions -- im2col over the input permuted to (N, H, W, C),
one row per output position, the whole batch one product in each pass, the
input's gradient folded back from the rows.

Each pass is held against native in float64 on the same float32 values; the
cases cross strides, padding, dilation, maps that are not square, batch 1
(the fold split over blocks of channels) and a batch whose rows exceed one
chunk, and both sides of each threshold (which run the im2col path and must
agree all the same).
"""
import pytest
import torch
import torch.nn.functional as F

import pycnn  # noqa: F401  (registers torch.ops.pycnn)

ops = torch.ops.pycnn

# (batch, channels, (H, W), out_channels, kernel, stride, padding, dilation)
CASES = [
    (64, 216, (3, 3), 32, (3, 3), 1, 1, 1),  # DenseNet's dense4 at batch 64
    (1, 208, (6, 6), 32, (3, 3), 1, 1, 1),  # DenseNet's dense3 at batch 1
    (3, 384, (5, 5), 10, (3, 3), 1, 1, 1),  # NiN's 384 -> 10
    (8, 24, (6, 6), 64, (5, 5), 1, 2, 1),  # GoogLeNet's 5x5 branch on 6x6
    (2, 40, (7, 5), 17, (3, 2), (2, 1), (1, 0), 1),  # not square, stride 2 x 1, unequal padding
    (5, 8, (9, 9), 128, (3, 3), 1, 2, 2),  # dilation 2, the fewest channels and the most outputs it takes
    (1, 40, (4, 4), 9, (3, 3), 1, 1, 1),  # batch 1: the fold in two blocks of channels (32 + 8)
    (2, 64, (12, 12), 32, (1, 1), 2, 0, 1),  # a 1x1 stride-2 shortcut
    (130, 128, (11, 11), 8, (3, 3), 1, 1, 1),  # 18.1M row values: two chunks
    # the other side of each threshold (the im2col path)
    (2, 7, (6, 6), 16, (3, 3), 1, 1, 1),  # 7 input channels
    (2, 32, (6, 6), 129, (3, 3), 1, 1, 1),  # 129 outputs
    (2, 32, (12, 12), 16, (3, 3), 1, 1, 1),  # a 12x12 output: 144 positions
]


def _ids(case):
    n, c, (h, w), o, (kh, kw), s, p, d = case
    return f"n{n}c{c}o{o}-{h}x{w}-k{kh}x{kw}-s{s}p{p}d{d}"


def _args(case):
    *_, s, p, d = case
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return pair(s), pair(p), pair(d), 1


def _reference(x, w, b, gy, args):
    stride, padding, dilation, groups = args
    x, w, gy = x.double(), w.double(), gy.double()
    y = F.conv2d(x, w, None if b is None else b.double(), stride, padding, dilation, groups)
    grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        gy, x, w, [w.shape[0]], stride, padding, dilation, False, [0, 0], groups, [True, True, True])
    return y, grad_input, grad_weight, grad_bias


def _pycnn(x, w, b, gy, args):
    grad_weight, grad_bias = ops.corr2d_backward_weight(gy, x, list(w.shape), *args, [True, True])
    return ops.corr2d(x, w, b, *args), ops.corr2d_backward_input(gy, w, list(x.shape), *args), grad_weight, grad_bias


def _draw(case, seed, bias=True):
    n, c, hw, o, k, *_ = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *hw, generator=gen)
    w = torch.randn(o, c, *k, generator=gen)
    b = torch.randn(o, generator=gen) if bias else None
    out_shape = F.conv2d(x[:1], w, None, *_args(case)[:3]).shape[1:]
    gy = torch.randn(n, *out_shape, generator=gen)
    return x, w, b, gy


def _assert_passes_match(x, w, b, gy, args):
    names = ("output", "grad_input", "grad_weight", "grad_bias")
    for name, e, m in zip(names, _reference(x, w, b, gy, args), _pycnn(x, w, b, gy, args)):
        assert m.dtype == torch.float32 and m.shape == e.shape, name
        assert m.is_contiguous(), name
        torch.testing.assert_close(m.double(), e, rtol=1e-5, atol=1e-5 * e.abs().max().item(),
                                   msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_rows_match_native(case, bias):
    x, w, b, gy = _draw(case, seed=case[0] * 1000 + case[1], bias=bias)
    _assert_passes_match(x, w, b, gy, _args(case))


def test_rows_channels_last_and_sliced():
    """channels_last in, channels_last out (as native); a sliced, non-contiguous batch."""
    case = (6, 48, (6, 6), 20, (3, 3), 1, 1, 1)
    x, w, b, _ = _draw(case, seed=3)
    args = _args(case)
    y = ops.corr2d(x.to(memory_format=torch.channels_last), w, b, *args)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, w, b, 1, 1), rtol=1e-5, atol=1e-4)
    sliced = x[::2]
    assert not sliced.is_contiguous()
    gy = torch.randn(3, 20, 6, 6, generator=torch.Generator().manual_seed(4))
    _assert_passes_match(sliced, w, b, gy, args)
    grad_input = ops.corr2d_backward_input(gy.to(memory_format=torch.channels_last), w, list(sliced.shape), *args)
    assert grad_input.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad_input, _reference(sliced, w, b, gy, args)[1].float(), rtol=1e-5, atol=1e-4)


def test_rows_infinite_input_reaches_the_outputs_that_read_it():
    """An inf in the input gives +-inf exactly at the outputs whose window holds
    it, and the weight's gradient is non-finite exactly where native's is."""
    case = (2, 16, (6, 6), 12, (3, 3), 1, 1, 1)
    x, w, b, gy = _draw(case, seed=5)
    x[1, 3, 2, 4] = float("inf")
    args = _args(case)
    expected, _, expected_grad_weight, _ = _reference(x, w, b, gy, args)
    output, _, grad_weight, _ = _pycnn(x, w, b, gy, args)
    assert torch.equal(output.isinf(), expected.isinf()) and output.isinf().any()
    assert torch.equal(output.isnan(), expected.isnan())
    assert torch.equal(grad_weight.isfinite(), expected_grad_weight.isfinite())
    finite = expected.isfinite()
    torch.testing.assert_close(output[finite].double(), expected[finite], rtol=1e-5, atol=1e-4)


def test_rows_empty_batch():
    """A batch of no samples: empty output and input gradient, a zero weight gradient."""
    case = (0, 16, (6, 6), 8, (3, 3), 1, 1, 1)
    x, w, b, gy = _draw(case, seed=6)
    output, grad_input, grad_weight, grad_bias = _pycnn(x, w, b, gy, _args(case))
    assert output.shape == (0, 8, 6, 6) and grad_input.shape == (0, 16, 6, 6)
    assert torch.equal(grad_weight, torch.zeros_like(w)) and torch.equal(grad_bias, torch.zeros(8))
