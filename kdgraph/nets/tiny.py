"""Tiny staged ResNets for 8x8 images (the digits preset): the zoo's topologies at a fraction of the cost.

``resnet_tiny`` is a CIFAR ResNet (``cifar_resnet.CifarResNet``: stem ``feat0``, three stages
``feat1..feat3`` at strides 1, 2, 4) with chosen depth and widths, so it stands in for
resnet8 ... resnet110 and resnet8x4 / resnet32x4 with the same ports. ``resnet18_tiny`` is the
ImageNet-style CIFAR ResNet-18 layout (stem ``feat0``, four stages ``feat1..feat4`` at strides
1, 2, 4, 8, ``linear`` head) with chosen widths, standing in for ResNet18 (TESKD). On an 8x8 digit
their last stage is 2x2 (resp. 1x1) pixels; graphs/presets/digits.yaml says which tiny net plays which
zoo net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..params import integer, integers
from ..registry import register_net
from .base import staged_ports
from .cifar_resnet import BasicBlock, CifarResNet, Stage, StagedNet, global_pool


@register_net("resnet_tiny", params={"depth": integer(ge=8, le=1202), "widths": integers(le=4096)})
def resnet_tiny(
    depth: int = 8, widths: list[int] | tuple[int, ...] = (8, 8, 16, 32), num_classes: int = 10, in_channels: int = 1
) -> CifarResNet:
    """CIFAR ResNet of any depth (6n+2) and widths [stem, stage1, stage2, stage3]; ports as resnet8..resnet110."""
    if len(widths) != 4:
        raise ValueError(f"resnet_tiny: widths are [stem, stage1, stage2, stage3], got {list(widths)}")
    return CifarResNet(int(depth), [int(w) for w in widths], num_classes=num_classes, in_channels=in_channels)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class TinyResNet18(StagedNet):
    """Stem conv-BN-ReLU, four stages of basic blocks (strides 1, 2, 2, 2), global pool, ``linear``."""

    n_stages = 5

    def __init__(self, widths: list[int], blocks: int, num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin, layers = widths[0], []
        for planes, stride in zip(widths[1:], (1, 2, 2, 2)):
            units = [BasicBlock(cin, planes, stride, _shortcut(cin, planes, stride))]
            units += [BasicBlock(planes, planes) for _ in range(1, blocks)]
            layers.append(Stage(*units))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)
        self._ports = staged_ports(list(widths), [1, 1, 2, 4, 8], cin, num_classes)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x  # as ResNet18: the stem's preact is its post-ReLU output
        return (self.layer1, self.layer2, self.layer3, self.layer4)[k - 1](x)

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(feat)
        return pooled, self.linear(pooled)


@register_net("resnet18_tiny", params={"widths": integers(le=4096), "blocks": integer(le=64)})
def resnet18_tiny(
    widths: list[int] | tuple[int, ...] = (8, 8, 16, 32, 64),
    blocks: int = 2,
    num_classes: int = 10,
    in_channels: int = 1,
) -> TinyResNet18:
    """ResNet18 layout (3x3 stem, four stages) with widths [stem, s1..s4]; ports as ResNet18."""
    if len(widths) != 5:
        raise ValueError(f"resnet18_tiny: widths are [stem, stage1..stage4], got {list(widths)}")
    return TinyResNet18([int(w) for w in widths], int(blocks), num_classes, in_channels)
