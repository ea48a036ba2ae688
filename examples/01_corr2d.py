"""Exercise 1: 2-D cross-correlation, the course's double loop against pycnn.

    python examples/01_corr2d.py

A convolutional layer computes a cross-correlation: the kernel K slides over
the input X, and each output element is the sum of the elementwise product of
K with the window of X under it. The course writes it as a double loop over
the output positions; pycnn's operator torch.ops.pycnn.corr2d computes the same
thing (im2col + one matrix product, see docs/kernels.md), and
pycnn.functional.conv2d / pycnn.nn.Conv2d are the drop-ins for
torch.nn.functional.conv2d / torch.nn.Conv2d that call it.

Prints the loop's result, pycnn's (three ways) and checks them against native
torch.nn.functional.conv2d: [[19, 25], [37, 43]].
"""
from _check import check

import torch
import torch.nn.functional as F

import pycnn.functional as PF
import pycnn.nn as pnn


def corr2d(X, K):
    """The course's loop: Y[i, j] = sum(X[i:i+h, j:j+w] * K)."""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])

loop = corr2d(X, K)
print("the course's loop:      ", loop)

# The operators take batches of multi-channel images: (N, C, H, W) inputs and
# (out_channels, in_channels, kh, kw) weights. Add the two missing dimensions.
x, k = X.reshape(1, 1, 3, 3), K.reshape(1, 1, 2, 2)

# 1. The operator itself: input, weight, bias, stride, padding, dilation, groups.
op = torch.ops.pycnn.corr2d(x, k, None, [1, 1], [0, 0], [1, 1], 1)[0, 0]
print("torch.ops.pycnn.corr2d: ", op)

# 2. The drop-in for torch.nn.functional.conv2d.
functional = PF.conv2d(x, k)[0, 0]
print("pycnn.functional.conv2d:", functional)

# 3. A layer: pycnn.nn.Conv2d is a torch.nn.Conv2d whose forward is pycnn's.
layer = pnn.Conv2d(1, 1, kernel_size=2, bias=False)
with torch.no_grad():
    layer.weight.copy_(k)
    module = layer(x)[0, 0]
print("pycnn.nn.Conv2d:        ", module)

native = F.conv2d(x, k)[0, 0]
print("torch (native):         ", native)
for name, value in [("loop", loop), ("operator", op), ("functional", functional), ("module", module)]:
    check(f"corr2d, {name}", value, native)
print("all agree with native PyTorch")
