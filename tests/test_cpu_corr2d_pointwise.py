"""corr2d's one-product path for plain 1x1 layers on small maps on the CPU
(csrc/cpu/corr2d_kernel.cpp, pointwise_as_one_product): stride 1, no padding,
ungrouped, float32, a batch of more than one sample and fewer than 128 outputs
a sample -- the whole batch's forward, input gradient and weight gradient as
one matrix product each, through channel-major copies of the input, the
output and the output's gradient.

Each pass is held against native in float64 on the same float32 values; the
cases cross batch sizes, maps that are and are not square, channel counts
past the GEMM's tiles, bias or none, and channels_last and sliced inputs.
"""
import pytest
import torch
import torch.nn.functional as F

import pycnn  # noqa: F401  (registers torch.ops.pycnn)

ops = torch.ops.pycnn

# (batch, channels, (H, W), out_channels)
CASES = [
    (2, 16, (3, 3), 8),
    (64, 832, (3, 3), 32),  # GoogLeNet's last 1x1 layers at batch 64
    (5, 33, (2, 7), 70),  # a map that is not square, odd channel counts
    (3, 130, (11, 11), 13),  # 121 outputs a sample, just under the threshold
    (2, 7, (1, 1), 5),  # a single output a sample
]
ARGS = ([1, 1], [0, 0], [1, 1], 1)


def _ids(case):
    n, c, (h, w), o = case
    return f"n{n}c{c}o{o}-{h}x{w}"


def _reference(x, w, b, gy):
    x, w, gy = x.double(), w.double(), gy.double()
    y = F.conv2d(x, w, None if b is None else b.double())
    grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
        gy, x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
    return y, grad_input, grad_weight


def _pycnn(x, w, b, gy):
    return (ops.corr2d(x, w, b, *ARGS), ops.corr2d_backward_input(gy, w, list(x.shape), *ARGS),
            ops.corr2d_backward_weight(gy, x, list(w.shape), *ARGS, [True, False])[0])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_pointwise_matches_native(case, bias):
    n, c, hw, o = case
    gen = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randn(n, c, *hw, generator=gen)
    w = torch.randn(o, c, 1, 1, generator=gen)
    b = torch.randn(o, generator=gen) if bias else None
    gy = torch.randn(n, o, *hw, generator=gen)
    for name, e, m in zip(("output", "grad_input", "grad_weight"), _reference(x, w, b, gy), _pycnn(x, w, b, gy)):
        assert m.dtype == torch.float32 and m.shape == e.shape, name
        torch.testing.assert_close(m.double(), e, rtol=1e-5, atol=1e-4 * e.abs().max().item(),
                                   msg=lambda s: f"{name}: {s}")


def test_pointwise_channels_last_and_sliced():
    """channels_last in, channels_last out (as native); a sliced, non-contiguous batch."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 40, 4, 4, generator=gen)
    w = torch.randn(24, 40, 1, 1, generator=gen)
    gy = torch.randn(3, 24, 4, 4, generator=gen)
    last = x.to(memory_format=torch.channels_last)
    y = ops.corr2d(last, w, None, *ARGS)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.conv2d(x, w), rtol=1e-5, atol=1e-4)
    sliced = x[::2]
    assert not sliced.is_contiguous()
    for name, e, m in zip(("output", "grad_input", "grad_weight"), _reference(sliced, w, None, gy),
                          _pycnn(sliced, w, None, gy)):
        torch.testing.assert_close(m.double(), e, rtol=1e-5, atol=1e-4 * e.abs().max().item(),
                                   msg=lambda s: f"{name}: {s}")
