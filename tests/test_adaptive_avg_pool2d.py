"""pycnn.functional.adaptive_avg_pool2d / torch.ops.pycnn.adaptive_avg_pool2d* against
native: the ways to give output_size. The checks adaptive average pooling
shares with the other poolings, on the cases of
samples.POOL_CASES["adaptive_avg_pool2d"], are in test_pooling.py."""

import torch
import torch.nn.functional as F

from conftest import compare_with_native


def test_adaptive_avg_pool2d_list_output_size(PF, device, dtype):
    x = torch.randn(2, 3, 7, 9, dtype=dtype, device=device)
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x, [3, 2]], kind="pool")
    compare_with_native(PF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, [x], dict(output_size=(2, 5)), kind="pool")
