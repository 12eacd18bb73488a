"""CIFAR VGGs with BatchNorm (vgg8, vgg11, vgg13, vgg16, vgg19), RepDistiller layout.

As in RepDistiller's ``model_dict`` the names mean the ``_bn`` variants. State-dict keys follow
``models/vgg.py``: ``block0..block4`` (Sequentials of conv(bias)-BN-ReLU with the last ReLU
dropped, so indices are ``blockK.{0,1,3,4,...}``), ``classifier`` (one Linear 512 -> classes);
the pools carry no parameters.

Ports (32x32 input): ``feat0..feat4`` are the five blocks after their final ReLU, channels
64/128/256/512/512, strides 1/2/4/8/8 (as in the reference, the max-pool after block 3 runs only
for 64x64 inputs); ``pooled`` the global average of ``feat4``; ``logits``.

Pre-activation semantics (RepDistiller ``preact=True``): ``preactK`` (K >= 1) is block K's last BN
output before its ReLU, so ``relu(preactK) == featK``; ``preact0`` is, as in the reference, the
post-ReLU ``feat0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_net
from .base import staged_ports
from .cifar_resnet import StagedNet

_CFG = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _block(widths: list[int], cin: int) -> nn.Sequential:
    """conv3x3(bias)-BN-ReLU per width, without the final ReLU (the net applies it, keeping the preact)."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])


class VGG(StagedNet):
    """CIFAR VGG-BN: five conv blocks with max-pools between, global pool, linear ``classifier``."""

    n_stages = 5

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        cins = [in_channels] + [c[-1] for c in cfg[:-1]]
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(widths, cin) for widths, cin in zip(cfg, cins)
        )
        # separate (parameter-free) pool modules keep the reference's module paths for taps
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, 2) for _ in range(4))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[-1][-1], num_classes)
        self._ports = staged_ports([c[-1] for c in cfg], [1, 2, 4, 8, 8], cfg[-1][-1], num_classes)
        for m in self.modules():  # the reference's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stage(self, k: int, x: torch.Tensor, pre: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # pools before blocks 1..3 always; before block 4 only on 64x64 inputs (8x8 here), as the reference
        if k in (1, 2, 3) or (k == 4 and x.shape[2] == 8):
            x = (self.pool0, self.pool1, self.pool2, self.pool3)[k - 1](x)
        pre = (self.block0, self.block1, self.block2, self.block3, self.block4)[k](x)
        x = F.relu(pre)
        return x, (x if k == 0 else pre)  # the reference's preact list starts with the post-ReLU feat0

    def head(self, feat: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.flatten(self.pool4(feat), 1)
        return pooled, self.classifier(pooled)


@register_net("vgg8")
def vgg8(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """CIFAR VGG-8 with BN (RepDistiller vgg8_bn), 3,965,028 params."""
    return VGG(_CFG[8], num_classes, in_channels)


@register_net("vgg11")
def vgg11(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """CIFAR VGG-11 with BN (RepDistiller vgg11_bn), 9,277,284 params."""
    return VGG(_CFG[11], num_classes, in_channels)


@register_net("vgg13")
def vgg13(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """CIFAR VGG-13 with BN (RepDistiller vgg13_bn), 9,462,180 params."""
    return VGG(_CFG[13], num_classes, in_channels)


@register_net("vgg16")
def vgg16(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """CIFAR VGG-16 with BN (RepDistiller vgg16_bn), 14,774,436 params."""
    return VGG(_CFG[16], num_classes, in_channels)


@register_net("vgg19")
def vgg19(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """CIFAR VGG-19 with BN (RepDistiller vgg19_bn), 20,086,692 params."""
    return VGG(_CFG[19], num_classes, in_channels)
