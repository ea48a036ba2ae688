"""Exercise 2: edge detection with the kernel K = [[1, -1]].

    python examples/02_edge_detection.py

A 6x8 image of ones with a black (zero) band in columns 2..5. Correlating it
with K = [[1, -1]] takes the difference of horizontally adjacent pixels: the
output (6x7) is 1 where white turns black, -1 where black turns white and 0
elsewhere. On the transposed image the same kernel finds nothing: it only sees
vertical edges.

Prints the image, the edges found by pycnn.functional.conv2d, and the
(all-zero) result on the transposed image, each checked against native.
"""
from _check import check

import torch
import torch.nn.functional as F

import pycnn.functional as PF

X = torch.ones((6, 8))
X[:, 2:6] = 0
K = torch.tensor([[1.0, -1.0]])
print("X =", X, sep="\n")

# pycnn.functional.conv2d takes (C, H, W) or (N, C, H, W): one channel here.
Y = PF.conv2d(X.unsqueeze(0), K.reshape(1, 1, 1, 2)).squeeze(0)
print("Y = corr2d(X, K): 1 at white->black, -1 at black->white", Y, sep="\n")
check("edges", Y, F.conv2d(X.unsqueeze(0), K.reshape(1, 1, 1, 2)).squeeze(0))

# The columns where the edges are, as the course describes them.
columns_one = sorted(set(torch.nonzero(Y == 1)[:, 1].tolist()))
columns_minus_one = sorted(set(torch.nonzero(Y == -1)[:, 1].tolist()))
print("columns of 1:", columns_one, " columns of -1:", columns_minus_one)

Yt = PF.conv2d(X.t().unsqueeze(0), K.reshape(1, 1, 1, 2)).squeeze(0)
print("corr2d(X.T, K): no vertical edges, all zero", Yt, sep="\n")
check("transposed", Yt, F.conv2d(X.t().unsqueeze(0), K.reshape(1, 1, 1, 2)).squeeze(0))
print("all agree with native PyTorch")
