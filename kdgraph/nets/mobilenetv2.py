"""CIFAR MobileNetV2 (width 0.5, expansion 6; RepDistiller ``mobile_half``), RepDistiller layout.

Registered as ``MobileNetV2`` (mdistiller's name) and the aliases ``mobilenetv2`` and
``mobile_half`` (RepDistiller's name). State-dict keys follow ``models/mobilenetv2.py``:
``conv1.{0,1}`` (conv-BN-ReLU, stride 2), ``blocks.{s}.{i}.conv.{0..7}`` (inverted residuals),
``conv2.{0,1}`` (1x1 to 1280), ``classifier.0`` (Linear 1280 -> classes).

Ports (32x32 input), as the reference's feature list: ``feat0`` = ``conv1`` (16 ch, stride 2),
``feat1`` after blocks 0-1 (12 ch, stride 2), ``feat2`` after block 2 (16 ch, stride 4), ``feat3``
after blocks 3-4 (48 ch, stride 8), ``feat4`` after blocks 5-6 (160 ch, stride 16); ``pooled`` the
global average of ``conv2``'s output (1280); ``logits``.

Pre-activation semantics: inverted residuals end in a linear BN (no ReLU), and the reference
returns the same list with ``preact=True``; so ``preactK == featK`` for every K, and
``relu(preactK) != featK`` for K >= 1 (features can be negative).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_net
from .base import staged_ports
from .cifar_resnet import StagedNet, global_pool

# (expansion t, channels c, repeats n, first stride s) before the width multiplier
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
_STAGE_BLOCKS = [(), (0, 1), (2,), (3, 4), (5, 6)]  # which ``blocks`` each feature ends after


def _conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN (linear); residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        # one flat Sequential keeps the reference's key indices conv.0 .. conv.7
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(StagedNet):
    """CIFAR MobileNetV2: stem, 7 inverted-residual groups, 1x1 conv to 1280, global pool, linear."""

    n_stages = 5

    def __init__(self, num_classes: int = 100, in_channels: int = 3, expansion: int = 6, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            cout = int(c * width)
            t = expansion if t != 1 else 1  # the first group never expands
            group = []
            for i in range(n):
                group.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            self.blocks.append(nn.Sequential(*group))
        last = int(1280 * width) if width > 1.0 else 1280  # the reference never narrows the last conv
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        widths = [int(32 * width)] + [int(_SETTING[g[-1]][1] * width) for g in _STAGE_BLOCKS[1:]]
        self._ports = staged_ports(widths, [2, 2, 4, 8, 16], last, num_classes)
        for m in self.modules():  # the reference's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = self.conv1(x)
        for g in _STAGE_BLOCKS[k]:
            x = self.blocks[g](x)
        return x, x  # linear bottlenecks: no ReLU to take the preact before

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(self.conv2(feat))
        return pooled, self.classifier(pooled)


def _mobilenetv2(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    """CIFAR MobileNetV2, width 0.5, expansion 6 (RepDistiller mobile_half), 812,836 params."""
    return MobileNetV2(num_classes=num_classes, in_channels=in_channels)


for _name in ("MobileNetV2", "mobilenetv2", "mobile_half"):
    register_net(_name)(_mobilenetv2)
