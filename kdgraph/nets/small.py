"""Small networks for tests, smoke runs and the digits quickstart."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..params import integer, integers, real
from ..registry import PortInfo, register_net
from .base import PortNet, staged_ports


@register_net("mlp", params={"hidden": integers(le=65536), "dropout": real(ge=0, lt=1)})
class MLP(PortNet):
    """Multi-layer perceptron on flattened images; ports logits and pooled (last hidden layer)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 8,
        hidden: list[int] | tuple[int, ...] = (64,),
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        self._width, self._classes = width, num_classes

    def forward_ports(self, x: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        h = self.body(torch.flatten(x, 1))
        return {"pooled": h, "logits": self.fc(h)}

    def port_info(self) -> dict[str, PortInfo]:
        return {"logits": PortInfo("logits", self._classes), "pooled": PortInfo("vector", self._width)}


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


@register_net("cnn", params={"width": integer(le=4096)})
class SmallCNN(PortNet):
    """Three conv-BN-ReLU stages (widths w, 2w, 4w; strides 1, 2, 2), global pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        self.stages = nn.ModuleList(
            [_ConvBN(in_channels, widths[0], 1), _ConvBN(widths[0], widths[1], 2), _ConvBN(widths[1], widths[2], 2)]
        )
        self.fc = nn.Linear(widths[2], num_classes)
        self._ports = staged_ports(widths, [1, 2, 4], widths[2], num_classes)

    def forward_ports(self, x: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, stage in enumerate(self.stages):
            pre = stage(x)
            x = F.relu(pre)
            out[f"preact{k}"], out[f"feat{k}"] = pre, x
        out["pooled"] = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        out["logits"] = self.fc(out["pooled"])
        return out

    def port_info(self) -> dict[str, PortInfo]:
        return dict(self._ports)
