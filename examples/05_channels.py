"""Exercise 5: multiple input and output channels, and the 1x1 convolution.

    python examples/05_channels.py

With several input channels the kernel has one 2-D slice per input channel:
each slice is correlated with its channel and the results are summed. With
several output channels there is one such kernel per output channel, stacked
into a (c_o, c_i, k_h, k_w) weight -- the layout torch.nn.Conv2d and
pycnn.corr2d use. A 1x1 kernel mixes channels only: it is a fully connected
layer applied at every pixel, a (c_o, c_i) matrix times the (c_i, h*w) input.

Prints [[56, 72], [104, 120]] (two input channels); the three output channels
of K, K+1, K+2; and that the 1x1 convolution equals the matrix product to 1e-6.
Each of pycnn's results is checked against native torch.nn.functional.conv2d.
"""
from _check import check

import torch
import torch.nn.functional as F

import pycnn.functional as PF


def corr2d(X, K):
    """The course's loop over one channel (exercise 1)."""
    h, w = K.shape
    Y = torch.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def corr2d_multi_in(X, K):
    """Sum over the input channels of each channel's correlation."""
    return sum(corr2d(x, k) for x, k in zip(X, K))


def corr2d_multi_in_out(X, K):
    """One multi-input correlation per output channel, stacked."""
    return torch.stack([corr2d_multi_in(X, k) for k in K], 0)


def corr2d_multi_in_out_1x1(X, K):
    """A 1x1 convolution as a matrix product: (c_o, c_i) @ (c_i, h*w)."""
    c_i, h, w = X.shape
    c_o = K.shape[0]
    return (K.reshape(c_o, c_i) @ X.reshape(c_i, h * w)).reshape(c_o, h, w)


# Two input channels.
X = torch.stack([torch.arange(9.0).reshape(3, 3), torch.arange(1.0, 10.0).reshape(3, 3)])  # (2, 3, 3)
K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])  # (2, 2, 2): c_i, k_h, k_w
ours = PF.conv2d(X, K.unsqueeze(0))[0]  # pycnn takes (c_o, c_i, k_h, k_w): one output channel
print("two input channels:", ours, sep="\n")
check("two input channels, the loop", corr2d_multi_in(X, K), F.conv2d(X, K.unsqueeze(0))[0])
check("two input channels", ours, F.conv2d(X, K.unsqueeze(0))[0])

# Three output channels: kernels K, K + 1, K + 2.
K3 = torch.stack((K, K + 1, K + 2), 0)  # (3, 2, 2, 2)
print("weight of three output channels:", tuple(K3.shape))
ours = PF.conv2d(X, K3)
print("three output channels:", ours, sep="\n")
check("three output channels, the loop", corr2d_multi_in_out(X, K3), F.conv2d(X, K3))
check("three output channels", ours, F.conv2d(X, K3))

# A 1x1 convolution is a fully connected layer over the channels.
torch.manual_seed(0)
X = torch.normal(0, 1, (3, 3, 3))
K = torch.normal(0, 1, (2, 3, 1, 1))
as_matmul = corr2d_multi_in_out_1x1(X, K)
ours = PF.conv2d(X, K)
difference = float((ours - as_matmul).abs().sum())
print(f"1x1 convolution against the matrix product: |difference| summed = {difference:.2e} (< 1e-6)")
check("1x1 convolution against the matrix product", ours, as_matmul, atol=1e-6)
check("1x1 convolution", ours, F.conv2d(X, K))
print("all agree with native PyTorch")
