"""pycnn.functional.avg_pool2d / torch.ops.pycnn.avg_pool2d* against native average
pooling: what only average pooling has (divisor_override, the positional
arguments, NaN and infinities). The checks it shares with the other poolings,
on the cases of samples.POOL_CASES["avg_pool2d"], are in test_pooling.py."""

import pytest
import torch
import torch.nn.functional as F

from conftest import compare_with_native
from samples import POOL_CASES


def _args(case):
    return POOL_CASES["avg_pool2d"][case]


@pytest.mark.parametrize(
    "case", ["odd_sizes_overlap", "ceil_window_in_left_padding", "ceil_asymmetric", "kernel_eq_input_padded"]
)
@pytest.mark.parametrize("divisor", [1, 3, 7, -2])
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl_pad", "excl_pad"])
def test_avg_pool2d_divisor_override(PF, case, divisor, count_include_pad, device, dtype):
    shape, kw = _args(case)
    x = torch.randn(shape, dtype=dtype, device=device)
    compare_with_native(
        PF.avg_pool2d,
        F.avg_pool2d,
        [x],
        dict(kw, count_include_pad=count_include_pad, divisor_override=divisor),
        kind="pool",
    )


def test_avg_pool2d_defaults(PF, device, dtype):
    x = torch.randn(2, 3, 9, 8, dtype=dtype, device=device)
    # stride=None means stride = kernel_size; positional arguments as native.
    for args in [(3,), (3, None), ((2, 3),), (3, 2, 1), (3, 2, 1, True), (3, 2, 1, True, False), (3, 2, 1, True, False, 5)]:
        compare_with_native(PF.avg_pool2d, F.avg_pool2d, [x, *args], kind="pool")


def test_avg_pool2d_nan_inf_propagation(PF, device, dtype):
    x = torch.randn(1, 2, 6, 6, dtype=dtype, device=device)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 4, 4] = float("inf")
    out = PF.avg_pool2d(x, 3, 1, 1)
    ref = F.avg_pool2d(x, 3, 1, 1)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=1e-5, atol=1e-6)
    assert torch.isnan(out).sum() == 9
