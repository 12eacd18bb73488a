"""CIFAR ResNets of the KD literature (resnet8 ... resnet110, resnet8x4, resnet32x4), RepDistiller layout.

State-dict keys follow RepDistiller / mdistiller ``models/resnet.py``: ``conv1, bn1,
layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc``, so their ``ckpt_epoch_240.pth``
teachers load unchanged.

Ports (32x32 input): ``feat0`` is the stem (conv-BN-ReLU, stride 1), ``feat1..feat3`` the three
stages (strides 1, 2, 4); ``pooled`` the global average of ``feat3``; ``logits``.

Pre-activation semantics (RepDistiller ``preact=True``): ``preactK`` (K >= 1) is the last block's
residual sum before its ReLU, so ``relu(preactK) == featK``. ``preact0`` is the stem output as the
reference returns it, i.e. already after its ReLU (``preact0 == feat0``).

This module also holds ``StagedNet``, the small stage-walking base shared by every zoo family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import PortInfo, register_net
from .base import PortNet, staged_ports

_HEAD_PORTS = ("logits", "pooled")


def stages_needed(wanted: frozenset[str], n_stages: int) -> int:
    """How many stages a request needs; ``n_stages + 1`` means the head (pooled/logits) too."""
    depth = 0
    for name in wanted:
        if name in _HEAD_PORTS:
            return n_stages + 1
        for prefix in ("feat", "preact"):
            index = name[len(prefix) :]
            if name.startswith(prefix) and index.isdigit():
                depth = max(depth, int(index) + 1)
    return depth


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling to (N, C): equals the reference's fixed-size pools on 32x32 inputs."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class StagedNet(PortNet):
    """A zoo net as stages (each giving a feature and its pre-activation) followed by a head.

    Subclasses implement ``stage(k, x, pre) -> (feat, preact)`` (``pre`` is the previous stage's
    pre-activation, which some families reuse instead of recomputing it) and ``head(feat, pre) ->
    (pooled, logits)``, and set ``self._ports``. ``forward_ports`` runs only as many stages as the
    request needs and keeps only the wanted tensors.
    """

    n_stages: int
    _ports: dict[str, PortInfo]

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward_ports(self, x: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        depth = stages_needed(wanted, self.n_stages)
        out: dict[str, torch.Tensor] = {}
        pre: torch.Tensor | None = None
        for k in range(min(depth, self.n_stages)):
            x, pre = self.stage(k, x, pre)
            if f"feat{k}" in wanted:
                out[f"feat{k}"] = x
            if f"preact{k}" in wanted:
                out[f"preact{k}"] = pre
        if depth > self.n_stages:
            out["pooled"], out["logits"] = self.head(x, pre)
        return out

    def port_info(self) -> dict[str, PortInfo]:
        return dict(self._ports)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut; returns (out, residual sum before the ReLU)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        pre = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(pre), pre


class Bottleneck(nn.Module):
    """1x1-3x3-1x1 bottleneck (expansion 4) plus shortcut; returns (out, sum before the ReLU)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        pre = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(pre), pre


class Stage(nn.Sequential):
    """A Sequential of blocks that each return (out, preact); returns the last block's pair.

    Called as a module (not iterated) so forward hooks on ``layerK`` fire; like the reference's
    last blocks, a tap on a stage or a block receives the (out, preact) pair.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        pre = x
        for block in self:
            x, pre = block(x)
        return x, pre


class CifarResNet(StagedNet):
    """CIFAR ResNet: 3x3 stem, three stages of 6n+2 / 9n+2 depth, global pool, linear ``fc``."""

    n_stages = 4

    def __init__(
        self,
        depth: int,
        widths: list[int],
        bottleneck: bool = False,
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        per_block = 9 if bottleneck else 6
        if (depth - 2) % per_block:
            raise ValueError(f"depth {depth} must be {per_block}n+2 for {block.__name__}")
        n = (depth - 2) // per_block
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(block, widths[1], n, 1)
        self.layer2 = self._make_layer(block, widths[2], n, 2)
        self.layer3 = self._make_layer(block, widths[3], n, 2)
        out = widths[3] * block.expansion
        self.fc = nn.Linear(out, num_classes)
        channels = [widths[0]] + [w * block.expansion for w in widths[1:]]
        self._ports = staged_ports(channels, [1, 1, 2, 4], out, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # same init as the reference (BN keeps the default 1/0)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> Stage:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return Stage(*layers)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x  # the reference's preact list starts with the post-ReLU stem
        return (self.layer1, self.layer2, self.layer3)[k - 1](x)

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(feat)
        return pooled, self.fc(pooled)


_SMALL = [16, 16, 32, 64]
_X4 = [32, 64, 128, 256]


@register_net("resnet8")
def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-8 (widths 16/16/32/64, 1 block per stage), 83,892 params."""
    return CifarResNet(8, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet14")
def resnet14(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-14 (widths 16/16/32/64, 2 blocks per stage), 181,108 params."""
    return CifarResNet(14, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet20")
def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (widths 16/16/32/64, 3 blocks per stage), 278,324 params."""
    return CifarResNet(20, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet32")
def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32 (widths 16/16/32/64, 5 blocks per stage), 472,756 params."""
    return CifarResNet(32, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet44")
def resnet44(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-44 (widths 16/16/32/64, 7 blocks per stage), 667,188 params."""
    return CifarResNet(44, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet56")
def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-56 (widths 16/16/32/64, 9 blocks per stage), 861,620 params."""
    return CifarResNet(56, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet110")
def resnet110(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-110 (widths 16/16/32/64, 18 blocks per stage), 1,736,564 params."""
    return CifarResNet(110, _SMALL, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet8x4")
def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-8x4 (widths 32/64/128/256, 1 block per stage), 1,233,540 params."""
    return CifarResNet(8, _X4, num_classes=num_classes, in_channels=in_channels)


@register_net("resnet32x4")
def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    """CIFAR ResNet-32x4 (widths 32/64/128/256, 5 blocks per stage), 7,433,860 params."""
    return CifarResNet(32, _X4, num_classes=num_classes, in_channels=in_channels)
