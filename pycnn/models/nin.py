"""Network in Network for 1x224x224 input (ARCHITECTURES.md, "nin").

Stages: nin1, pool1, nin2, pool2, nin3, pool3, dropout, nin4, gap, flatten —
the shapes after each (but dropout) are the ones ARCHITECTURES.md lists. Global
average pooling makes it work for any input of at least 67x67 (the first
convolution and three poolings must leave at least 1x1).
"""
from torch import nn

from pycnn.models._common import check_probability

DEFAULT_SIZE = (224, 224)


def nin_block(L, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    """Conv(i,o,k,s,p) ReLU → Conv(o,o,1) ReLU → Conv(o,o,1) ReLU."""
    return nn.Sequential(
        L.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding), nn.ReLU(),
        L.Conv2d(out_channels, out_channels, 1), nn.ReLU(),
        L.Conv2d(out_channels, out_channels, 1), nn.ReLU(),
    )


def build_nin(L, num_classes: int, in_channels: int, dropout: float = 0.5):
    """NiN(in,96,11,4,0) MaxPool(3,2) → NiN(96,256,5,1,2) MaxPool(3,2) → NiN(256,384,3,1,1)
    MaxPool(3,2) → Dropout → NiN(384,num_classes,3,1,1) → GAP → Flatten.

    Options:
        dropout: the probability of the Dropout layer (default 0.5).
    """
    check_probability("dropout", dropout)
    return [
        ("nin1", nin_block(L, in_channels, 96, 11, 4, 0)),
        ("pool1", L.MaxPool2d(3, 2)),
        ("nin2", nin_block(L, 96, 256, 5, 1, 2)),
        ("pool2", L.MaxPool2d(3, 2)),
        ("nin3", nin_block(L, 256, 384, 3, 1, 1)),
        ("pool3", L.MaxPool2d(3, 2)),
        ("dropout", nn.Dropout(dropout)),
        ("nin4", nin_block(L, 384, num_classes, 3, 1, 1)),
        ("gap", L.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]
