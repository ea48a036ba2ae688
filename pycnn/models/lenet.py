"""LeNet-5 (sigmoid activations, average pooling) and LeNet with batch-norm,
for 1x28x28 input (ARCHITECTURES.md, "lenet" and "lenet_bn").

Stages: conv1, pool1, conv2, pool2, flatten, fc1, fc2, fc3 — the shapes after
the first five are the ones ARCHITECTURES.md lists.
"""
from torch import nn

DEFAULT_SIZE = (28, 28)


def build_lenet(L, num_classes: int, in_channels: int):
    """LeNet: Conv(in,6,5,p=2) Sigmoid AvgPool(2,2) → Conv(6,16,5) Sigmoid AvgPool(2,2) →
    Flatten → Linear(400,120) Sigmoid → Linear(120,84) Sigmoid → Linear(84,num_classes).

    `L` is the layer namespace (pycnn.nn or torch.nn). No options."""
    return [
        ("conv1", nn.Sequential(L.Conv2d(in_channels, 6, 5, padding=2), nn.Sigmoid())),
        ("pool1", L.AvgPool2d(2, 2)),
        ("conv2", nn.Sequential(L.Conv2d(6, 16, 5), nn.Sigmoid())),
        ("pool2", L.AvgPool2d(2, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.Sigmoid())),
        ("fc2", nn.Sequential(nn.Linear(120, 84), nn.Sigmoid())),
        ("fc3", nn.Linear(84, num_classes)),
    ]


def build_lenet_bn(L, num_classes: int, in_channels: int):
    """LeNet with batch-norm: Conv(in,6,5) BN(6) Sigmoid AvgPool(2,2) → Conv(6,16,5) BN(16)
    Sigmoid AvgPool(2,2) → Flatten → Linear(256,120) BN1d(120) Sigmoid → Linear(120,84)
    BN1d(84) Sigmoid → Linear(84,num_classes). Note: no padding in the first convolution.

    `L` is the layer namespace (pycnn.nn or torch.nn). No options."""
    return [
        ("conv1", nn.Sequential(L.Conv2d(in_channels, 6, 5), L.BatchNorm2d(6), nn.Sigmoid())),
        ("pool1", L.AvgPool2d(2, 2)),
        ("conv2", nn.Sequential(L.Conv2d(6, 16, 5), L.BatchNorm2d(16), nn.Sigmoid())),
        ("pool2", L.AvgPool2d(2, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Sequential(nn.Linear(16 * 4 * 4, 120), L.BatchNorm1d(120), nn.Sigmoid())),
        ("fc2", nn.Sequential(nn.Linear(120, 84), L.BatchNorm1d(84), nn.Sigmoid())),
        ("fc3", nn.Linear(84, num_classes)),
    ]
