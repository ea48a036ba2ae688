"""ResNet-18 for 1x96x96 input (ARCHITECTURES.md, "resnet18").

Stages: b1..b5, gap, flatten, fc — the shapes after b1..b5 and flatten are the
ones ARCHITECTURES.md lists. Global average pooling makes it work for any
input of at least 17x17 (and at 224x224, as the original ImageNet model).
"""
from torch import Tensor, nn

DEFAULT_SIZE = (96, 96)


class Residual(nn.Module):
    """Conv(i,o,3,s,p=1) BN ReLU → Conv(o,o,3,p=1) BN, plus the shortcut (the input itself, or
    Conv(i,o,1,s) when use_1x1conv), added, then ReLU.

    Submodules, in execution order: conv1, bn1, relu1, conv2, bn2, shortcut (Conv2d or
    nn.Identity), relu2."""

    def __init__(self, L, in_channels: int, out_channels: int, use_1x1conv: bool = False, stride: int = 1):
        super().__init__()
        self.conv1 = L.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = L.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = L.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn2 = L.BatchNorm2d(out_channels)
        self.shortcut = L.Conv2d(in_channels, out_channels, 1, stride=stride) if use_1x1conv else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


def resnet_stage(L, in_channels: int, out_channels: int, num_residuals: int, first_stage: bool) -> nn.Sequential:
    """num_residuals residual blocks; unless first_stage, the first one halves the size
    (stride 2) and changes the channels through a 1x1 shortcut."""
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_stage:
            blocks.append(Residual(L, in_channels, out_channels, use_1x1conv=True, stride=2))
        else:
            blocks.append(Residual(L, out_channels, out_channels))
    return nn.Sequential(*blocks)


def build_resnet18(L, num_classes: int, in_channels: int):
    """ResNet-18: b1 Conv(in,64,7,s=2,p=3) BN(64) ReLU MaxPool(3,2,1) → b2 Residual(64,64) ×2 →
    b3 Residual(64,128,1x1,s=2) Residual(128,128) → b4 (…,256) → b5 (…,512) → GAP Flatten
    Linear(512,num_classes). Every convolution has a bias, as ARCHITECTURES.md defines Conv.

    `L` is the layer namespace (pycnn.nn or torch.nn). No options."""
    b1 = nn.Sequential(L.Conv2d(in_channels, 64, 7, stride=2, padding=3), L.BatchNorm2d(64), nn.ReLU(),
                       L.MaxPool2d(3, 2, 1))
    return [
        ("b1", b1),
        ("b2", resnet_stage(L, 64, 64, 2, first_stage=True)),
        ("b3", resnet_stage(L, 64, 128, 2, first_stage=False)),
        ("b4", resnet_stage(L, 128, 256, 2, first_stage=False)),
        ("b5", resnet_stage(L, 256, 512, 2, first_stage=False)),
        ("gap", L.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(512, num_classes)),
    ]
