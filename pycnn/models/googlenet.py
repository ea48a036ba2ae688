"""GoogLeNet (Inception v1) for 1x96x96 input (ARCHITECTURES.md, "googlenet").

Stages: b1..b5, fc — the shapes after b1..b5 are the ones ARCHITECTURES.md
lists (b5 ends with global average pooling and Flatten, so any input of at
least 17x17 works).
"""
import torch
from torch import Tensor, nn

DEFAULT_SIZE = (96, 96)


class Inception(nn.Module):
    """Four parallel paths, concatenated on the channel axis:
    p1: Conv(i,c1,1) ReLU;  p2: Conv(i,c2a,1) ReLU Conv(c2a,c2b,3,p=1) ReLU;
    p3: Conv(i,c3a,1) ReLU Conv(c3a,c3b,5,p=2) ReLU;  p4: MaxPool(3,1,1) Conv(i,c4,1) ReLU.
    Output channels: c1 + c2b + c3b + c4."""

    def __init__(self, L, in_channels: int, c1: int, c2, c3, c4: int):
        super().__init__()
        self.p1 = nn.Sequential(L.Conv2d(in_channels, c1, 1), nn.ReLU())
        self.p2 = nn.Sequential(L.Conv2d(in_channels, c2[0], 1), nn.ReLU(),
                                L.Conv2d(c2[0], c2[1], 3, padding=1), nn.ReLU())
        self.p3 = nn.Sequential(L.Conv2d(in_channels, c3[0], 1), nn.ReLU(),
                                L.Conv2d(c3[0], c3[1], 5, padding=2), nn.ReLU())
        self.p4 = nn.Sequential(L.MaxPool2d(3, 1, 1), L.Conv2d(in_channels, c4, 1), nn.ReLU())
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.p1(x), self.p2(x), self.p3(x), self.p4(x)], 1)


def build_googlenet(L, num_classes: int, in_channels: int):
    """GoogLeNet: b1 Conv(in,64,7,s=2,p=3) ReLU MaxPool(3,2,1) → b2 Conv(64,64,1) ReLU
    Conv(64,192,3,p=1) ReLU MaxPool(3,2,1) → b3 two Inception blocks, MaxPool(3,2,1) → b4 five
    Inception blocks, MaxPool(3,2,1) → b5 two Inception blocks, GAP, Flatten → Linear(1024,num_classes).

    `L` is the layer namespace (pycnn.nn or torch.nn). No options."""
    b1 = nn.Sequential(L.Conv2d(in_channels, 64, 7, stride=2, padding=3), nn.ReLU(), L.MaxPool2d(3, 2, 1))
    b2 = nn.Sequential(L.Conv2d(64, 64, 1), nn.ReLU(), L.Conv2d(64, 192, 3, padding=1), nn.ReLU(),
                       L.MaxPool2d(3, 2, 1))
    b3 = nn.Sequential(Inception(L, 192, 64, (96, 128), (16, 32), 32),
                       Inception(L, 256, 128, (128, 192), (32, 96), 64),
                       L.MaxPool2d(3, 2, 1))
    b4 = nn.Sequential(Inception(L, 480, 192, (96, 208), (16, 48), 64),
                       Inception(L, 512, 160, (112, 224), (24, 64), 64),
                       Inception(L, 512, 128, (128, 256), (24, 64), 64),
                       Inception(L, 512, 112, (144, 288), (32, 64), 64),
                       Inception(L, 528, 256, (160, 320), (32, 128), 128),
                       L.MaxPool2d(3, 2, 1))
    b5 = nn.Sequential(Inception(L, 832, 256, (160, 320), (32, 128), 128),
                       Inception(L, 832, 384, (192, 384), (48, 128), 128),
                       L.AdaptiveAvgPool2d(1), nn.Flatten())
    return [("b1", b1), ("b2", b2), ("b3", b3), ("b4", b4), ("b5", b5), ("fc", nn.Linear(1024, num_classes))]
