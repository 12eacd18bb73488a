"""ImageNet-style ResNets for CIFAR (ResNet18, ResNet34, ResNet50): 3x3 stem, no max-pool, 4 stages.

State-dict keys follow RepDistiller / mdistiller ``models/resnetv2.py``: ``conv1, bn1,
layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3],shortcut.{0,1}}, linear``. ResNet18 is also
TESKD's deployed backbone (11,220,132 params with 100 classes).

Ports (32x32 input): ``feat0`` the stem after BN-ReLU (64 ch, stride 1), ``feat1..feat4`` the four
stages (strides 1, 2, 4, 8; channels 64/128/256/512, x4 for the bottleneck ResNet50); ``pooled``
the global average of ``feat4``; ``logits``.

Pre-activation semantics (RepDistiller ``preact=True``): ``preactK`` (K >= 1) is the last block's
residual sum before its ReLU, so ``relu(preactK) == featK``; ``preact0 == feat0`` (post-ReLU stem,
as the reference returns it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_net
from .base import staged_ports
from .cifar_resnet import Stage, StagedNet, global_pool


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Identity (empty Sequential) or 1x1 conv-BN projection, under the reference's ``shortcut`` key."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus ``shortcut``; returns (out, residual sum before the ReLU)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x)
        return F.relu(pre), pre


class Bottle(nn.Module):
    """1x1-3x3-1x1 bottleneck (expansion 4) plus ``shortcut``; returns (out, sum before the ReLU)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        pre = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(pre), pre


class ResNetCifar(StagedNet):
    """ResNet with a 3x3 stride-1 stem and four stages (64..512 planes) for 32x32 inputs, ``linear`` head."""

    n_stages = 5

    def __init__(
        self,
        block: type[Basic] | type[Bottle],
        num_blocks: list[int],
        num_classes: int = 100,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, layers = 64, []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            units = []
            for i in range(n):
                units.append(block(cin, planes, stride if i == 0 else 1))
                cin = planes * block.expansion
            layers.append(Stage(*units))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(cin, num_classes)
        channels = [64] + [p * block.expansion for p in (64, 128, 256, 512)]
        self._ports = staged_ports(channels, [1, 1, 2, 4, 8], cin, num_classes)
        for m in self.modules():  # the reference's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each residual branch starts at zero (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, (Basic, Bottle)):
                    nn.init.zeros_((m.bn3 if isinstance(m, Bottle) else m.bn2).weight)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x
        return (self.layer1, self.layer2, self.layer3, self.layer4)[k - 1](x)

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(feat)
        return pooled, self.linear(pooled)


@register_net("ResNet18")
def resnet18_cifar(num_classes: int = 100, in_channels: int = 3) -> ResNetCifar:
    """CIFAR ResNet-18 (3x3 stem, no max-pool, stages 64-512 x 2/2/2/2), 11,220,132 params."""
    return ResNetCifar(Basic, [2, 2, 2, 2], num_classes, in_channels)


@register_net("ResNet34")
def resnet34_cifar(num_classes: int = 100, in_channels: int = 3) -> ResNetCifar:
    """CIFAR ResNet-34 (3x3 stem, no max-pool, stages 64-512 x 3/4/6/3), 21,328,292 params."""
    return ResNetCifar(Basic, [3, 4, 6, 3], num_classes, in_channels)


@register_net("ResNet50")
def resnet50_cifar(num_classes: int = 100, in_channels: int = 3) -> ResNetCifar:
    """CIFAR ResNet-50 (3x3 stem, no max-pool, bottlenecks 3/4/6/3, 2048-d head), 23,705,252 params."""
    return ResNetCifar(Bottle, [3, 4, 6, 3], num_classes, in_channels)
