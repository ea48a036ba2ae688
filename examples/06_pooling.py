"""Exercise 6: max and average pooling, with padding and stride.

    python examples/06_pooling.py

A pooling window slides over the input like a convolution kernel but has no
weights: it takes the maximum or the average of the elements under it. Each
channel is pooled on its own, so pooling keeps the number of channels.

Prints the course's loop and pycnn.functional's max and average pooling of a
3x3 input with a 2x2 window ([[4, 5], [7, 8]] and [[2, 3], [5, 6]]); then
pycnn.nn.MaxPool2d / AvgPool2d on a 4x4 input with padding and stride
([[10]], [[5, 7], [13, 15]], [[1, 3], [9, 11], [13, 15]]), on two channels,
and ceil_mode's output sizes. Every result is checked against native.
"""
from _check import check

import torch
import torch.nn.functional as F

import pycnn.functional as PF
import pycnn.nn as pnn


def pool2d(X, pool_size, mode="max"):
    """The course's loop: the max or mean of each p_h x p_w window (stride 1, no padding)."""
    p_h, p_w = pool_size
    Y = torch.zeros((X.shape[0] - p_h + 1, X.shape[1] - p_w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            window = X[i:i + p_h, j:j + p_w]
            Y[i, j] = window.max() if mode == "max" else window.mean()
    return Y


X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
x = X.reshape(1, 1, 3, 3)
for mode, ours, native in [
    ("max", PF.max_pool2d(x, 2, stride=1), F.max_pool2d(x, 2, stride=1)),
    ("avg", PF.avg_pool2d(x, 2, stride=1), F.avg_pool2d(x, 2, stride=1)),
]:
    print(f"{mode} pooling, 2x2 window, stride 1:", ours[0, 0], sep="\n")
    check(f"{mode} pooling, the loop", pool2d(X, (2, 2), mode), native[0, 0])
    check(f"{mode} pooling", ours, native)

# torch.nn's pooling layers default the stride to the window size.
X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
print("X =", X, sep="\n")
layers = [
    ("MaxPool2d(3)", dict(kernel_size=3)),
    ("MaxPool2d(3, padding=1, stride=2)", dict(kernel_size=3, padding=1, stride=2)),
    ("MaxPool2d((2, 4), padding=(1, 2), stride=(2, 3))", dict(kernel_size=(2, 4), padding=(1, 2), stride=(2, 3))),
]
for text, options in layers:
    ours = pnn.MaxPool2d(**options)(X)
    print(f"{text}:", ours, sep="\n")
    check(text, ours, torch.nn.MaxPool2d(**options)(X))

# Average pooling with padding: by default the padded zeros count in the divisor
# (count_include_pad=True); with count_include_pad=False only the input's elements do.
for include in (True, False):
    text = f"AvgPool2d(3, padding=1, stride=2, count_include_pad={include})"
    options = dict(kernel_size=3, padding=1, stride=2, count_include_pad=include)
    ours = pnn.AvgPool2d(**options)(X)
    print(f"{text}:", ours, sep="\n")
    check(text, ours, torch.nn.AvgPool2d(**options)(X))

# Two channels in, two channels out.
X2 = torch.cat((X, X + 1), 1)  # (1, 2, 4, 4)
ours = pnn.MaxPool2d(3, padding=1, stride=2)(X2)
print("two channels, MaxPool2d(3, padding=1, stride=2):", ours, sep="\n")
check("two channels", ours, torch.nn.MaxPool2d(3, padding=1, stride=2)(X2))

# ceil_mode rounds the output size up instead of down -- but never so far that
# the last window would start beyond the input and its left padding.
for size, kernel, stride, padding in [(4, 3, 2, 0), (5, 2, 2, 1)]:
    x = torch.rand(1, 1, size, size)
    shapes = []
    for ceil_mode in (False, True):
        options = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
        ours = pnn.MaxPool2d(**options)(x)
        check(f"MaxPool2d({options}) on {size}x{size}", ours, torch.nn.MaxPool2d(**options)(x))
        shapes.append(ours.shape[-1])
    rounded_up = -(-(size + 2 * padding - kernel) // stride) + 1  # ceil((n + 2p - k) / s) + 1
    note = "" if rounded_up == shapes[1] else (
        f" (not {rounded_up}: window {rounded_up - 1} would start at {(rounded_up - 1) * stride - padding}, "
        f"in the right padding)")
    print(f"{size}x{size} input, window {kernel}, stride {stride}, padding {padding}: "
          f"output {shapes[0]}x{shapes[0]}, with ceil_mode {shapes[1]}x{shapes[1]}{note}")
print("all agree with native PyTorch")
