"""corr2d's CPU GEMM (csrc/cpu/gemm.cpp) and its narrow-map im2col table.

The GEMM packs blocks of KC=256 rows, MC=96 rows of a and NC=2048 columns of
b into 12 x 32 tiles: the shapes below cross each of those edges (and the
tile edges), and take every transposed operand the three corr2d kernels use.
Each result is checked against native float64. The same shapes run again
with PYCNN_CPU_GEMM=aten (ATen's BLAS), in a subprocess because the choice is
made once per process.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import pycnn  # noqa: F401  (registers torch.ops.pycnn)

# (batch, channels, size, out_channels, kernel, stride, padding, dilation, groups)
CASES = [
    (1, 1, 5, 1, 3, 1, 1, 1, 1),  # every dimension smaller than a tile
    (2, 29, 9, 13, 3, 1, 1, 1, 1),  # K = 261: two blocks of depth; 13 rows: a tile and one row
    (1, 3, 64, 97, 3, 1, 1, 1, 1),  # one sample of 4,096 columns: two NC blocks; 97 rows: past MC
    (3, 16, 33, 33, 3, 2, 1, 1, 1),  # odd sizes, stride 2; a 17x17 output: one GEMM per sample of a chunk
    (4, 8, 14, 20, 3, 1, 1, 1, 2),  # 14x14, grouped: one GEMM per sample and group
    (64, 128, 3, 128, 3, 1, 1, 1, 1),  # ResNet-9's last stage: the table path, chunks over threads
    (4, 12, 7, 12, 3, 1, 2, 2, 3),  # 7x7, dilated, grouped: the table path
    (5, 8, 8, 6, 1, 1, 0, 1, 2),  # 1x1 without im2col, grouped
    (2, 6, 11, 5, 5, 3, 2, 1, 1),  # a 4x4 output from stride 3: the table path
    (2, 4, 6, 3, 3, 1, 0, 1, 1),  # a 4x4 output without padding
    # Samples over threads, the weight packed once: 12x12 (144 columns: four
    # whole 32-column tiles and a half one), 128 rows (past MC, an 8-row last
    # strip); a 1x1 kernel whose columns are the input; an odd batch.
    (4, 16, 12, 128, 3, 1, 1, 1, 1),
    (4, 20, 12, 24, 1, 1, 0, 1, 1),
    (3, 7, 13, 5, 3, 1, 1, 1, 1),
    # The channels-last rows (a 6x6 map), whose row-major left operand is
    # packed 8 x 8 and 4 x 8 blocks at a time: a depth of 117 (a tail of 5)
    # and 108 rows (nine whole strips); 50 rows (a last strip of 2).
    (3, 13, 6, 20, 3, 1, 1, 1, 1),
    (2, 16, 5, 9, 3, 1, 1, 1, 1),
]


def _check(case, bias=True):
    n, c, size, o, k, stride, pad, dil, groups = case
    gen = torch.Generator().manual_seed(hash(case) % 2**31)
    x = torch.randn(n, c, size, size, generator=gen, dtype=torch.float64)
    w = torch.randn(o, c // groups, k, k, generator=gen, dtype=torch.float64)
    b = torch.randn(o, generator=gen, dtype=torch.float64)
    args = ([stride] * 2, [pad] * 2, [dil] * 2, groups)
    xf, wf, bf = (t.float().requires_grad_() for t in (x, w, b))
    y = torch.ops.pycnn.corr2d(xf, wf, bf if bias else None, *args)
    xd, wd, bd = (t.clone().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd if bias else None, stride, pad, dil, groups)
    grad = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    y.backward(grad.float())
    ref.backward(grad)
    pairs = [(y, ref), (xf.grad, xd.grad), (wf.grad, wd.grad)] + ([(bf.grad, bd.grad)] if bias else [])
    for ours, theirs in pairs:
        scale = theirs.abs().max().item() or 1.0
        error = (ours.double() - theirs).abs().max().item() / scale
        assert error < 1e-5, (case, error)


@pytest.mark.parametrize("case", CASES)
def test_corr2d_against_float64(case):
    _check(case)


@pytest.mark.parametrize("case", CASES[-3:])
def test_corr2d_without_bias(case):
    _check(case, bias=False)


def test_corr2d_single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case in CASES[:4]:
            _check(case)
    finally:
        torch.set_num_threads(threads)


def test_the_same_with_atens_blas():
    code = ("import sys; sys.path.insert(0, 'tests'); import test_cpu_gemm as t\n"
            "for case in t.CASES: t._check(case)\nprint('ok')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYCNN_CPU_GEMM": "aten"})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
