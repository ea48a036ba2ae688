"""AlexNet for 1x224x224 input (ARCHITECTURES.md, "alexnet").

Stages: conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool3, flatten, fc1,
fc2, fc3 — the shapes after the first nine are the ones ARCHITECTURES.md lists.
The first Linear has 256*5*5 = 6400 inputs, so the input must be one that the
convolutions and poolings reduce to 5x5 (224x224; anything from 193 to 224).
"""
from torch import nn

from pycnn.models._common import check_probability

DEFAULT_SIZE = (224, 224)


def build_alexnet(L, num_classes: int, in_channels: int, dropout: float = 0.5):
    """AlexNet: Conv(in,96,11,s=4,p=1) ReLU MaxPool(3,2) → Conv(96,256,5,p=2) ReLU MaxPool(3,2) →
    Conv(256,384,3,p=1) ReLU → Conv(384,384,3,p=1) ReLU → Conv(384,256,3,p=1) ReLU MaxPool(3,2) →
    Flatten → Linear(6400,4096) ReLU Dropout → Linear(4096,4096) ReLU Dropout → Linear(4096,num_classes).

    Options:
        dropout: the probability of both Dropout layers (default 0.5).
    """
    check_probability("dropout", dropout)
    return [
        ("conv1", nn.Sequential(L.Conv2d(in_channels, 96, 11, stride=4, padding=1), nn.ReLU())),
        ("pool1", L.MaxPool2d(3, 2)),
        ("conv2", nn.Sequential(L.Conv2d(96, 256, 5, padding=2), nn.ReLU())),
        ("pool2", L.MaxPool2d(3, 2)),
        ("conv3", nn.Sequential(L.Conv2d(256, 384, 3, padding=1), nn.ReLU())),
        ("conv4", nn.Sequential(L.Conv2d(384, 384, 3, padding=1), nn.ReLU())),
        ("conv5", nn.Sequential(L.Conv2d(384, 256, 3, padding=1), nn.ReLU())),
        ("pool3", L.MaxPool2d(3, 2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Sequential(nn.Linear(256 * 5 * 5, 4096), nn.ReLU(), nn.Dropout(dropout))),
        ("fc2", nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout))),
        ("fc3", nn.Linear(4096, num_classes)),
    ]
