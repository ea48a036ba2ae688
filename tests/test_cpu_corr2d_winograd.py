"""corr2d's Winograd path on the CPU (csrc/cpu/corr2d_winograd.cpp):
F(2x2, 3x3) for float32 3x3 convolutions with stride 1, no dilation, no
groups, padding at most 2, at least 32 channels on each side (or 128 input
channels and 8 output channels), an output of at least 4x4 and at least 64 2x2
tiles of output in the batch: forward, input gradient and weight gradient;
F(2x2, 5x5) for 5x5 convolutions under the same rules (padding at most 4, at
least 32 channels on each side), every pass too.

The cases cross what the tiling can get wrong: odd output sizes (tiles that
hang over the edge of the map), padding 0, 1 and 2 and unequal padding
(blocks that read past the input), outputs of one tile, batches of several
blocks of tiles split over the threads, channel counts that are not a multiple
of the GEMM's tiles. Float32 has no exact reference, so each result is held
against native float64: its error must stay within a few times the error of
native float32 on the same inputs.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pycnn  # noqa: F401  (registers torch.ops.pycnn)

ops = torch.ops.pycnn

# (batch, channels, (H, W), out_channels, padding); each batch at least 64 tiles
CASES = [
    (2, 64, (12, 12), 64, (1, 1)),  # even output: whole tiles
    (2, 65, (13, 15), 70, (1, 1)),  # odd output: tiles over the right and bottom edges
    (8, 64, (7, 7), 72, (0, 0)),  # a 5x5 output, no padding
    (2, 64, (14, 14), 64, (2, 2)),  # padding 2: the input gradient's padding is 0
    (2, 64, (16, 23), 66, (0, 2)),  # unequal padding
    (16, 32, (4, 4), 32, (1, 1)),  # the smallest output, 4x4; the fewest channels
    (9, 64, (15, 15), 80, (1, 1)),  # 576 tiles: several blocks
    (8, 64, (24, 24), 96, (1, 1)),  # 1,152 tiles: blocks spread over the threads
    (8, 130, (6, 6), 100, (1, 1)),  # channels past the GEMM's 12-row and 32-column tiles
    (8, 384, (5, 5), 10, (1, 1)),  # many input channels, few output channels (NiN's 3x3 384 -> 10)
]


# The same for 5x5 kernels, padding up to 4.
CASES_5X5 = [
    (2, 64, (14, 14), 64, (2, 2)),  # even output: whole tiles
    (2, 65, (13, 15), 70, (2, 2)),  # odd output: tiles over the right and bottom edges
    (8, 32, (9, 9), 40, (0, 0)),  # a 5x5 output, no padding; the fewest channels
    (2, 64, (12, 12), 64, (4, 4)),  # padding 4: the input gradient's padding is 0
    (2, 48, (16, 21), 33, (1, 3)),  # unequal padding
    (8, 96, (26, 26), 256, (2, 2)),  # NiN's and AlexNet's layer: blocks spread over the threads
    (16, 130, (4, 4), 100, (2, 2)),  # the smallest output, 4x4; channels past the GEMM's tiles
]


def _tiles(case, kernel=3):
    n, _, (h, w), _, (ph, pw) = case
    return n * ((h + 2 * ph - kernel + 2) // 2) * ((w + 2 * pw - kernel + 2) // 2)


def _ids(case):
    n, c, hw, o, p = case
    return f"n{n}c{c}o{o}-{hw[0]}x{hw[1]}-p{p[0]}{p[1]}"


def _tensors(case, kernel=3):
    n, c, hw, o, _ = case
    gen = torch.Generator().manual_seed(sum(map(hash, map(str, case))) % 2**31)
    x = torch.randn(n, c, *hw, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c, kernel, kernel, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64)
    return x, w, b


NAMES = ("output", "grad_input", "grad_weight")


def _native(x, w, b, padding, gy):
    y = F.conv2d(x, w, b, 1, padding)
    grad_input, grad_weight, _ = torch.ops.aten.convolution_backward(
        gy, x, w, [w.size(0)], [1, 1], padding, [1, 1], False, [0, 0], 1, [True, True, False])
    return y, grad_input, grad_weight


def _pycnn(x, w, b, padding, gy):
    args = ([1, 1], list(padding), [1, 1], 1)
    return (ops.corr2d(x, w, b, *args), ops.corr2d_backward_input(gy, w, list(x.shape), *args),
            ops.corr2d_backward_weight(gy, x, list(w.shape), *args, [True, False])[0])


@pytest.mark.parametrize("kernel, case", [(3, c) for c in CASES] + [(5, c) for c in CASES_5X5],
                         ids=[f"3x3-{_ids(c)}" for c in CASES] + [f"5x5-{_ids(c)}" for c in CASES_5X5])
def test_winograd_matches_native_to_float32_accuracy(kernel, case):
    assert _tiles(case, kernel) >= 64
    x, w, b = _tensors(case, kernel)
    padding = case[-1]
    gy = torch.randn(F.conv2d(x, w, b, 1, padding).shape, generator=torch.Generator().manual_seed(1),
                     dtype=torch.float64)
    exact = _native(x, w, b, padding, gy)
    native32 = _native(x.float(), w.float(), b.float(), padding, gy.float())
    mine = _pycnn(x.float(), w.float(), b.float(), padding, gy.float())
    for name, e, n, m in zip(NAMES, exact, native32, mine):
        assert m.dtype == torch.float32 and m.shape == e.shape, name
        scale = e.abs().max().item()
        native_error = (n.double() - e).abs().max().item()
        error = (m.double() - e).abs().max().item()
        # Winograd rounds a few more times than a direct sum: F(2x2, 3x3)
        # within 8 times native's error (+ 1e-6 of the largest value),
        # F(2x2, 5x5), whose transforms have larger coefficients, within
        # 2-4e-6 of the largest value in every pass of these cases (up to 19
        # times native's, where native's was unusually small). A wrong tap
        # or tile would be off by the size of the values, 10^5 x this.
        slack = 1e-6 if kernel == 3 else 6e-6
        assert error <= 8 * native_error + slack * scale, f"{name}: error {error:.3g}, native float32 {native_error:.3g}"


@pytest.mark.parametrize(
    "channels, out_channels, batch, size",
    [(31, 32, 2, 12), (32, 31, 2, 12), (32, 32, 2, 12), (32, 32, 1, 12), (32, 32, 16, 3), (128, 7, 2, 12),
     (128, 8, 2, 12), (127, 8, 2, 12)],
)
def test_either_side_of_the_winograd_thresholds(channels, out_channels, batch, size):
    """31 channels on either side, 36 tiles (one 12x12 output), a 3x3 output, 128
    channels to 7 or 127 to 8 run im2col + GEMM (or the direct loops); 32
    channels, 72 tiles and a 12x12 output, or 128 channels to 8, Winograd: each
    agrees with native."""
    case = (batch, channels, (size, size), out_channels, (1, 1))
    x, w, b = (t.float() for t in _tensors(case))
    gy = torch.randn(batch, out_channels, size, size, generator=torch.Generator().manual_seed(2))
    for name, n, m in zip(NAMES, _native(x, w, b, (1, 1), gy), _pycnn(x, w, b, (1, 1), gy)):
        torch.testing.assert_close(m, n, rtol=1e-4, atol=1e-3, msg=lambda s: f"{name}: {s}")


def test_winograd_through_autograd_and_channels_last():
    """A training step's gradients through pycnn.functional, channels_last in and out."""
    case = (3, 64, (10, 10), 72, (1, 1))
    x, w, b = (t.float().requires_grad_() for t in _tensors(case))
    x_last = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    y = pycnn.functional.conv2d(x_last, w, b, padding=1)
    y_native = F.conv2d(x, w, b, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_native, rtol=1e-4, atol=1e-4)
    gy = torch.randn_like(y_native)
    mine = torch.autograd.grad(y, (x_last, w, b), gy)
    native = torch.autograd.grad(y_native, (x, w, b), gy)
    for m, n in zip(mine, native):
        torch.testing.assert_close(m, n, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_winograd_non_finite_values_stay_where_native_puts_them(where, kernel):
    """An inf or NaN reaches exactly the outputs and gradients that native's
    reach; only which non-finite value may differ -- Winograd's sums of
    differences turn inf into NaN, as cuDNN's and oneDNN's Winograd do. (The
    weight gradient, whose last step mixes every sum of a kernel into each of
    its taps, is computed again by im2col + GEMM when a sum is not finite.)
    (A non-finite weight is tried without padding: native skips the taps that
    fall on padding, where pycnn's paths multiply it by zero, a NaN.)"""
    padding = ((kernel // 2,) * 2) if where == "input" else (0, 0)
    size = (7, 8) if kernel == 3 else (9, 10)
    case = (4 if where == "input" else 8, 64, size, 64, padding)
    assert _tiles(case, kernel) >= 64
    x, w, b = (t.float() for t in _tensors(case, kernel))
    gy = torch.randn(F.conv2d(x, w, b, 1, padding).shape, generator=torch.Generator().manual_seed(3))
    if where == "input":
        x[0, 3, 2, 5] = float("inf")
        x[-1, 0, 6, 0] = float("nan")
        gy[0, 5, 3, 3] = float("-inf")
    else:
        w[4, 2, 1, 1] = float("inf")
        w[9, 0, 0, 2] = float("nan")
    # Native in float64: its float32 weight gradient (oneDNN's) spreads a NaN of
    # the input to kernel taps that never read it.
    native = _native(x.double(), w.double(), b.double(), padding, gy.double())
    for name, n, m in zip(NAMES, native, _pycnn(x, w, b, padding, gy)):
        assert torch.equal(torch.isfinite(m), torch.isfinite(n)), name
        finite = torch.isfinite(n)
        torch.testing.assert_close(m[finite], n[finite].float(), rtol=1e-4, atol=1e-3, msg=lambda s: f"{name}: {s}")


@pytest.mark.parametrize(
    "channels, out_channels, batch, size",
    [(31, 32, 2, 12), (32, 31, 2, 12), (32, 32, 2, 12), (32, 32, 1, 12), (32, 32, 16, 3), (128, 8, 2, 12)],
)
def test_either_side_of_the_5x5_thresholds(channels, out_channels, batch, size):
    """5x5 layers follow the 3x3 thresholds, but for the many-input, few-output
    rule (128 -> 8 runs im2col + GEMM): each agrees with native, every pass."""
    case = (batch, channels, (size, size), out_channels, (2, 2))
    x, w, b = (t.float() for t in _tensors(case, kernel=5))
    gy = torch.randn(batch, out_channels, size, size, generator=torch.Generator().manual_seed(2))
    for name, n, m in zip(NAMES, _native(x, w, b, (2, 2), gy), _pycnn(x, w, b, (2, 2), gy)):
        torch.testing.assert_close(m, n, rtol=1e-4, atol=2e-3, msg=lambda s: f"{name}: {s}")


_WITHOUT_WINOGRAD = """
import sys, torch, pycnn
x, w, gy = torch.load(sys.argv[1])
ops = torch.ops.pycnn
args = ([1, 1], [2, 2], [1, 1], 1)
torch.save((ops.corr2d(x, w, None, *args), ops.corr2d_backward_input(gy, w, list(x.shape), *args),
            ops.corr2d_backward_weight(gy, x, list(w.shape), *args, [True, False])[0]), sys.argv[1])
"""


def test_5x5_layers_run_winograd(tmp_path):
    """The 5x5 passes differ in their last bits from the same calls with
    Winograd turned off (PYCNN_CPU_WINOGRAD=0, im2col + GEMM): the path above
    is the one that ran, and it agrees with the other."""
    case = (4, 64, (14, 14), 64, (2, 2))
    x, w, _ = (t.float() for t in _tensors(case, kernel=5))
    gy = torch.randn(4, 64, 14, 14, generator=torch.Generator().manual_seed(4))
    args = ([1, 1], [2, 2], [1, 1], 1)
    mine = (ops.corr2d(x, w, None, *args), ops.corr2d_backward_input(gy, w, list(x.shape), *args),
            ops.corr2d_backward_weight(gy, x, list(w.shape), *args, [True, False])[0])
    path = tmp_path / "tensors.pt"
    torch.save((x, w, gy), path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYCNN_CPU_WINOGRAD": "0", "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", _WITHOUT_WINOGRAD, str(path)], env=env, check=True, timeout=300)
    for name, m, other in zip(NAMES, mine, torch.load(path)):
        assert not torch.equal(m, other), f"{name}: Winograd did not run"
        torch.testing.assert_close(m, other, rtol=1e-4, atol=2e-3, msg=lambda s: f"{name}: {s}")
