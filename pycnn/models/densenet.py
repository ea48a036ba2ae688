"""DenseNet for 1x96x96 input (ARCHITECTURES.md, "densenet").

Stages: b1, dense1, transition1, dense2, transition2, dense3, transition3,
dense4, bn, relu, gap, flatten, fc — the channels after b1 and each dense and
transition stage are the ones ARCHITECTURES.md lists (64 → 192 → 96 → 224 →
112 → 240 → 120 → 248), at 24, 24, 12, 12, 6, 6, 3, 3 pixels for 96x96 input.
"""
from typing import Sequence

import torch
from torch import Tensor, nn

from pycnn.models._common import check_positive

DEFAULT_SIZE = (96, 96)


def conv_block(L, in_channels: int, out_channels: int) -> nn.Sequential:
    """BN(i) ReLU Conv(i,o,3,p=1)."""
    return nn.Sequential(L.BatchNorm2d(in_channels), nn.ReLU(), L.Conv2d(in_channels, out_channels, 3, padding=1))


class DenseBlock(nn.Module):
    """num_convs conv blocks with growth `growth_rate`: block j maps c + j·g channels to g, and
    its output is concatenated to its input on the channel axis. Output channels: c + n·g."""

    def __init__(self, L, num_convs: int, in_channels: int, growth_rate: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [conv_block(L, in_channels + j * growth_rate, growth_rate) for j in range(num_convs)]
        )
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


def transition_block(L, in_channels: int, out_channels: int) -> nn.Sequential:
    """BN(i) ReLU Conv(i,o,1) AvgPool(2,2)."""
    return nn.Sequential(L.BatchNorm2d(in_channels), nn.ReLU(), L.Conv2d(in_channels, out_channels, 1),
                         L.AvgPool2d(2, 2))


def build_densenet(L, num_classes: int, in_channels: int, growth_rate: int = 32,
                   convs_per_block: Sequence[int] = (4, 4, 4, 4)):
    """DenseNet: Conv(in,64,7,s=2,p=3) BN(64) ReLU MaxPool(3,2,1) → dense blocks of conv blocks
    with a channel-halving transition after each but the last → BN ReLU GAP Flatten
    Linear(c,num_classes).

    Options:
        growth_rate: channels each conv block adds (default 32).
        convs_per_block: conv blocks in each dense block (default (4, 4, 4, 4)).
    The defaults are ARCHITECTURES.md's model (64 → 192 → 96 → ... → 248 channels).
    """
    check_positive("growth_rate", growth_rate)
    convs_per_block = tuple(convs_per_block)
    if not convs_per_block:
        raise ValueError("convs_per_block must name at least one dense block")
    for n in convs_per_block:
        check_positive("each entry of convs_per_block", n)
    stages = [("b1", nn.Sequential(L.Conv2d(in_channels, 64, 7, stride=2, padding=3), L.BatchNorm2d(64), nn.ReLU(),
                                   L.MaxPool2d(3, 2, 1)))]
    channels = 64
    for i, num_convs in enumerate(convs_per_block, start=1):
        block = DenseBlock(L, num_convs, channels, growth_rate)
        stages.append((f"dense{i}", block))
        channels = block.out_channels
        if i != len(convs_per_block):
            stages.append((f"transition{i}", transition_block(L, channels, channels // 2)))
            channels //= 2
    stages += [
        ("bn", L.BatchNorm2d(channels)),
        ("relu", nn.ReLU()),
        ("gap", L.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(channels, num_classes)),
    ]
    return stages
