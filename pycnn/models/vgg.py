"""VGG-11 for 1x224x224 input (ARCHITECTURES.md, "vgg11").

Stages: b1..b5 (VGG blocks), flatten, fc1, fc2, fc3 — the shapes after b1..b5
and flatten are the ones ARCHITECTURES.md lists. The first Linear has
c*7*7 inputs (c = the last block's channels), so the input must be 224x224
(anything from 224 to 255).
"""
from torch import nn

from pycnn.models._common import check_positive, check_probability

DEFAULT_SIZE = (224, 224)

# (number of convolutions, output channels) of each block at full width.
VGG11_BLOCKS = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


def vgg_block(L, num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """num_convs × [Conv(·,out_channels,3,p=1) ReLU] then MaxPool(2,2)."""
    layers = []
    for _ in range(num_convs):
        layers += [L.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(L.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def build_vgg11(L, num_classes: int, in_channels: int, width_divisor: int = 1, dropout: float = 0.5):
    """VGG-11: blocks (1,64) (1,128) (2,256) (2,512) (2,512) → Flatten → Linear(c·7·7,4096) ReLU
    Dropout → Linear(4096,4096) ReLU Dropout → Linear(4096,num_classes).

    Options:
        width_divisor: divides every block's channel count (default 1 = full width; the
            reference training run uses 4: 16, 32, 64, 128, 128 channels, first Linear
            6272→4096). The fully connected layers keep 4096 units.
        dropout: the probability of both Dropout layers (default 0.5).
    """
    check_positive("width_divisor", width_divisor)
    check_probability("dropout", dropout)
    stages = []
    channels = in_channels
    for index, (num_convs, width) in enumerate(VGG11_BLOCKS, start=1):
        out = max(1, width // width_divisor)
        stages.append((f"b{index}", vgg_block(L, num_convs, channels, out)))
        channels = out
    stages += [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Sequential(nn.Linear(channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(dropout))),
        ("fc2", nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout))),
        ("fc3", nn.Linear(4096, num_classes)),
    ]
    return stages
