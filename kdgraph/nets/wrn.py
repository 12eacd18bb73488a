"""Wide ResNets wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2 (pre-activation blocks), RepDistiller layout.

State-dict keys follow RepDistiller / mdistiller ``models/wrn.py``: ``conv1,
block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc``.

Ports (32x32 input): ``feat0`` is the stem conv output (no BN/ReLU, stride 1), ``feat1..feat3`` the
three stage outputs (residual sums, strides 1, 2, 4) with channels 16, 16k, 32k, 64k; ``pooled``
the global average of ``relu(bn1(feat3))``; ``logits``.

Pre-activation semantics (RepDistiller ``preact=True``): a pre-activation ResNet has no ReLU right
after a stage, so ``preactK`` (K >= 1) is the BatchNorm that the next layer applies to ``featK``
(``block{K+1}.layer.0.bn1``, or the final ``bn1`` for K=3): ``relu(preactK)`` is what the next
layer consumes, NOT ``featK``. We reuse that BN output inside the next block instead of running
the BN twice (same values, running statistics updated once). That is RepDistiller's behaviour for
every method that does not ask for pre-activation features. mdistiller's forward always computes
them, so in training mode its ``block2.layer.0.bn1``, ``block3.layer.0.bn1`` and ``bn1`` update their
running statistics twice per step (the same batch, momentum applied twice). kdgraph follows
RepDistiller: the weights and the training forward match both codes, but the running statistics (and so
the eval-mode outputs) of a WRN trained here match RepDistiller's, not mdistiller's.
``preact0 == feat0`` (the raw stem conv, which may be negative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_net
from .base import staged_ports
from .cifar_resnet import StagedNet, global_pool


class WideBasic(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        # a 1x1 shortcut only where the width changes (the reference's ``equalInOut``)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        act = F.relu(self.bn1(x) if normed is None else normed)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # the widening shortcut reads the activated input, the identity the raw one (as the reference)
        return (x if self.convShortcut is None else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):
    """One WRN stage: ``layer`` holds its blocks; the first may reuse a precomputed ``bn1`` output."""

    def __init__(self, n: int, cin: int, cout: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBasic(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate) for i in range(n)]
        )

    def forward(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> torch.Tensor:
        for i, block in enumerate(self.layer):
            x = block(x, normed if i == 0 else None)
        return x


class WideResNet(StagedNet):
    """Wide ResNet-d-k for CIFAR: conv 16, three pre-activation stages, BN-ReLU, global pool, ``fc``."""

    n_stages = 4

    def __init__(
        self, depth: int, widen: int, num_classes: int = 100, in_channels: int = 3, drop_rate: float = 0.0
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth {depth} must be 6n+4")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.fc = nn.Linear(ch[3], num_classes)
        self._ports = staged_ports(ch, [1, 1, 2, 4], ch[3], num_classes)
        for m in self.modules():  # the reference's init: N(0, sqrt(2/(k*k*out))) convs, zero fc bias
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def _next_bn(self, k: int) -> nn.BatchNorm2d:
        """The BatchNorm the network applies next to stage k's output (its ``preactK``)."""
        return (self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1)[k - 1]

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = self.conv1(x)
            return x, x
        block = (self.block1, self.block2, self.block3)[k - 1]
        x = block(x, pre if k > 1 else None)  # stages 2, 3 reuse the BN computed as preact
        return x, self._next_bn(k)(x)

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(F.relu(pre))  # pre is bn1(feat3)
        return pooled, self.fc(pooled)


@register_net("wrn_16_1")
def wrn_16_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-16-1 (widths 16/16/32/64), 180,916 params."""
    return WideResNet(16, 1, num_classes=num_classes, in_channels=in_channels)


@register_net("wrn_16_2")
def wrn_16_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-16-2 (widths 16/32/64/128), 703,284 params."""
    return WideResNet(16, 2, num_classes=num_classes, in_channels=in_channels)


@register_net("wrn_40_1")
def wrn_40_1(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-40-1 (widths 16/16/32/64), 569,780 params."""
    return WideResNet(40, 1, num_classes=num_classes, in_channels=in_channels)


@register_net("wrn_40_2")
def wrn_40_2(num_classes: int = 100, in_channels: int = 3) -> WideResNet:
    """Wide ResNet-40-2 (widths 16/32/64/128), 2,255,156 params."""
    return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels)
