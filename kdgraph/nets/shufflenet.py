"""CIFAR ShuffleNet V1 (groups 3) and V2 (1x), RepDistiller layout.

State-dict keys follow RepDistiller / mdistiller ``models/ShuffleNetv1.py`` and
``models/ShuffleNetv2.py``: V1 ``conv1, bn1, layer{1,2,3}.{i}.{conv1..3,bn1..3}, linear``;
V2 ``conv1, bn1, layer{1,2,3}.0.{conv1..5,bn1..5}`` (down-sampling unit), ``layer{1,2,3}.{i>=1}.
{conv1..3,bn1..3}``, ``conv2, bn2, linear``. Both stems are a 1x1 conv (no down-sampling).

Ports (32x32 input): ``feat0`` the stem after BN-ReLU (24 ch, stride 1), ``feat1..feat3`` the
three stages (strides 2, 4, 8); channels V1 240/480/960, V2 116/232/464. ``pooled``: V1 the
global average of ``feat3`` (960), V2 of ``relu(bn2(conv2(feat3)))`` (1024); ``logits``.

Pre-activation semantics (RepDistiller ``preact=True``), ``preact0 == feat0`` (post-ReLU stem) in
both. V1: ``preactK`` is the last unit's residual sum before its ReLU, ``relu(preactK) == featK``.
V2: ``preactK`` is the last unit's ``cat([x1, branch])`` before the ReLU *and* before the channel
shuffle, so ``relu(preactK)`` equals ``featK`` only up to that shuffle:
``featK == channel_shuffle(relu(preactK), 2)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_net
from .base import staged_ports
from .cifar_resnet import Stage, StagedNet, global_pool


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> interleave the g groups channel-wise (ShuffleNet's shuffle)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 - shuffle - 3x3 depthwise - grouped 1x1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = cout // 4
        self.g1 = 1 if cin == 24 else groups  # the 24-channel stem output is not grouped
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
        if self.stride == 2:
            pre = torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        else:
            pre = out + x
        return F.relu(pre), pre


class ShuffleNetV1(StagedNet):
    """CIFAR ShuffleNet V1: 1x1 stem (24), three stages of grouped units, global pool, ``linear``."""

    n_stages = 4

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        layers = []
        for w, n in zip(widths, blocks):
            # the stride-2 first unit concatenates its input, so its branch makes only w - cin channels
            units = [ShuffleV1Unit(cin, w - cin, 2, groups)] + [ShuffleV1Unit(w, w, 1, groups) for _ in range(n - 1)]
            layers.append(Stage(*units))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(widths[-1], num_classes)
        self._ports = staged_ports([24, *widths], [1, 2, 4, 8], widths[-1], num_classes)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x
        return (self.layer1, self.layer2, self.layer3)[k - 1](x)

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(feat)
        return pooled, self.linear(pooled)


class ShuffleV2Unit(nn.Module):
    """Split channels in half; 1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU on one half; concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x.chunk(2, dim=1)
        branch = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x2)))))))
        out = channel_shuffle(torch.cat([x1, F.relu(branch)], 1), 2)
        return out, torch.cat([x1, branch], 1)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: depthwise-then-1x1 on the left, 1x1-depthwise-1x1 on the right; concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x))))))))
        out = channel_shuffle(torch.cat([left, right], 1), 2)
        return out, out  # never a stage's last unit, so its preact is never published


class ShuffleNetV2(StagedNet):
    """CIFAR ShuffleNet V2: 1x1 stem (24), three stages (down unit + units), 1x1 conv, pool, ``linear``."""

    n_stages = 4

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
        blocks: tuple[int, int, int] = (3, 7, 3),
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        layers = []
        for w, n in zip(widths[:3], blocks):
            layers.append(Stage(ShuffleV2Down(cin, w), *[ShuffleV2Unit(w) for _ in range(n)]))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)
        self._ports = staged_ports([24, *widths[:3]], [1, 2, 4, 8], widths[3], num_classes)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k == 0:
            x = F.relu(self.bn1(self.conv1(x)))
            return x, x
        return (self.layer1, self.layer2, self.layer3)[k - 1](x)

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = global_pool(F.relu(self.bn2(self.conv2(feat))))
        return pooled, self.linear(pooled)


@register_net("ShuffleV1")
def shufflev1(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV1:
    """CIFAR ShuffleNet V1, groups 3, stages 240/480/960 x 4/8/4 units, 949,258 params."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


@register_net("ShuffleV2")
def shufflev2(num_classes: int = 100, in_channels: int = 3) -> ShuffleNetV2:
    """CIFAR ShuffleNet V2 1x, stages 116/232/464 x 3/7/3 units, 1024-d head, 1,355,528 params."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
