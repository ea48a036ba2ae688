"""Exercise 4: the output shape of a convolution with padding and stride.

    python examples/04_padding_stride.py

With an n_h x n_w input, a k_h x k_w kernel, p_h rows and p_w columns of
padding in total (half on each side) and strides s_h, s_w, the output is

    floor((n_h + p_h - k_h + s_h) / s_h)  x  floor((n_w + p_w - k_w + s_w) / s_w)

(= floor((n - k + 2p) / s) + 1 with p the padding on one side, which is what
pycnn.nn.Conv2d's padding argument gives). The course's four layers on an 8x8
input, each computed by pycnn.nn.Conv2d: the shape it returns, the formula's,
and the values checked against a torch.nn.Conv2d with the same weights.
Prints 8x8, 8x8, 4x4 and 2x2.
"""
from _check import check

import torch

import pycnn.nn as pnn


def formula(n, k, p_total, s):
    """The course's formula for one dimension; p_total = padding on both sides."""
    return (n + p_total - k + s) // s


torch.manual_seed(0)
X = torch.rand(size=(8, 8))

layers = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=(5, 3), padding=(2, 1)),
    dict(kernel_size=3, padding=1, stride=2),
    dict(kernel_size=(3, 5), padding=(0, 1), stride=(3, 4)),
]
for options in layers:
    conv = pnn.Conv2d(1, 1, **options)
    native = torch.nn.Conv2d(1, 1, **options)
    native.load_state_dict(conv.state_dict())
    x = X.reshape(1, 1, 8, 8)  # (batch, channels, height, width)
    with torch.no_grad():
        y, y_native = conv(x), native(x)
    shape = tuple(y.shape[2:])
    expected = tuple(formula(8, k, 2 * p, s) for k, p, s in zip(conv.kernel_size, conv.padding, conv.stride))
    text = ", ".join(f"{key}={value}" for key, value in options.items())
    print(f"Conv2d({text}): output {shape[0]}x{shape[1]}, formula {expected[0]}x{expected[1]}")
    check(f"shape of Conv2d({text}) against the formula", shape, expected)
    check(f"Conv2d({text})", y, y_native)
print("all agree with the formula and with native PyTorch")
