"""ResNet-9 for 1x28x28 input ("resnet9"): the network of the fast CIFAR-10
training recipes (D. Page, "How to train your ResNet", 2018), at the size of
Fashion-MNIST. Not one of the course's models: it is pycnn's fast route to a
high test accuracy on a CPU (see --recipe best in pycnn.train).

It keeps the full 28x28 resolution for its first two convolutions (where
ResNet-18's stride-2 7x7 stem and max pool leave 7x7), then halves the map
three times: 28 -> 14 -> 7 -> 3. Every convolution is 3x3 with padding 1 and
no bias (the batch-norm after it has the shift).

Stages: prep, layer1, layer2, layer3, pool, flatten, fc.
"""
from torch import Tensor, nn

DEFAULT_SIZE = (28, 28)


def conv_bn(L, in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv(i,o,3,p=1, no bias) BN(o) ReLU."""
    return nn.Sequential(L.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         L.BatchNorm2d(out_channels), nn.ReLU())


class Residual(nn.Module):
    """x + (conv_bn → conv_bn)(x), channels and size unchanged. Submodules: body."""

    def __init__(self, L, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(L, channels, channels), conv_bn(L, channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def build_resnet9(L, num_classes: int, in_channels: int, width: int = 16):
    """ResNet-9: prep conv_bn(in,w) → layer1 conv_bn(w,2w) MaxPool(2) Residual(2w) →
    layer2 conv_bn(2w,4w) MaxPool(2) → layer3 conv_bn(4w,8w) MaxPool(2) Residual(8w) →
    pool AdaptiveAvgPool(1) → Flatten → Linear(8w,num_classes), where conv_bn is
    Conv(3x3, p=1, no bias) BN ReLU.

    Option: width (16): the channels of the first convolution. Page's CIFAR-10
    network has width 64; 16 trains about eight times faster, and is enough for
    Fashion-MNIST's grey 28x28 images."""
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"width must be a positive int, got {width!r}")
    w = width
    return [
        ("prep", conv_bn(L, in_channels, w)),
        ("layer1", nn.Sequential(conv_bn(L, w, 2 * w), L.MaxPool2d(2), Residual(L, 2 * w))),
        ("layer2", nn.Sequential(conv_bn(L, 2 * w, 4 * w), L.MaxPool2d(2))),
        ("layer3", nn.Sequential(conv_bn(L, 4 * w, 8 * w), L.MaxPool2d(2), Residual(L, 8 * w))),
        ("pool", L.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(8 * w, num_classes)),
    ]
