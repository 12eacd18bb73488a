"""OFD's margin from a teacher BN's statistics and its connector (Heo et al., ICCV 2019)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from ..params import integer, text
from ..registry import PortInfo, register_op
from .base import Op, channels_of, first_info
from .call import _submodule


def ofd_margin(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per channel, E[x | x < 0] for x ~ N(beta, |gamma|^2); -3 |gamma| where P(x < 0) <= 0.001.

    m = beta, s = |gamma|: margin = m - s * phi(m / s) / Phi(-m / s) with phi the standard normal
    density and Phi its distribution function (OFD, section 3.3; the reference code's threshold 0.001).
    Computed in float64.
    """
    s, m = gamma.detach().double().abs(), beta.detach().double()
    p_neg = torch.special.ndtr(-m / s)
    expected = -s * torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi) / p_neg + m
    return torch.where(p_neg > 0.001, expected, -3 * s)


def _last_bn(module: nn.Module, path: str, node: str) -> nn.BatchNorm2d:
    if isinstance(module, nn.BatchNorm2d):
        return module
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise ValueError(f"bn_margin: {node}.{path or '(the whole net)'} holds no BatchNorm2d")
    return bns[-1]


@register_op("bn_margin", params={"node": text(), "bn": text()})
class BNMargin(Op):
    """OFD's margin per channel from the BN before a stage's final ReLU, read from another node's weights.

    node: the network (the teacher); bn: the dotted path of that BatchNorm2d, or of a module whose last
    BatchNorm2d it is (``layer1`` of a CIFAR ResNet: its last block's bn2, as mdistiller's
    ``get_bn_before_relu``; for the x4 nets ``layer1.4.bn2``). The BN is shared, not copied: the
    margin follows the weights the node holds at run time (a checkpoint loaded after building).
    Input: the feature that BN produces (e.g. ``teacher.preact1``; read only for device and dtype).
    Output ``out``: (1, C, 1, 1), margin_c = E[x | x < 0] for x ~ N(beta_c, gamma_c^2) (see ``ofd_margin``).
    Heo, Kim, Yun, Park, Kwak, Choi. A Comprehensive Overhaul of Feature Distillation. ICCV 2019,
    arXiv:1904.01866.
    """

    node_refs: tuple[str, ...] = ("node",)
    stops_gradient = True

    def __init__(
        self,
        node: str,
        bn: str = "",
        nodes: Mapping[str, nn.Module] | None = None,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        if nodes is None or node not in nodes:
            raise ValueError(f"bn_margin: unknown node {node!r} (declare it before this node)")
        self.node, self.bn = node, bn
        self._target: tuple[nn.BatchNorm2d] = (_last_bn(_submodule(nodes[node], bn, node), bn, node),)  # not owned
        self._channels = self._target[0].num_features
        expected = first_info(in_info).channels
        if expected is not None and expected != self._channels:
            raise ValueError(f"bn_margin: {node}.{bn} has {self._channels} channels, its input {expected}")

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        bn = self._target[0]
        return ofd_margin(bn.weight, bn.bias).to(feature.dtype).reshape(1, -1, 1, 1)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("map", self._channels)}

    def extra_repr(self) -> str:
        return f"node={self.node!r}, bn={self.bn!r}"


@register_op("ofd_connector", params={"channels": integer(null=True), "kernel_size": integer(le=64)})
class OFDConnector(Op):
    """OFD's connector: Conv1x1(C_s -> C_t, no bias) + BN, the conv drawn N(0, 2 / (k*k*C_t)).

    Inputs: the student's pre-ReLU feature [, the teacher's, for C_t]; C_t = ``channels`` or the
    teacher's channels. BN starts at weight 1, bias 0. kernel_size: 1 (mdistiller's
    ``OFD.CONNECTOR.KERNEL_SIZE``). Output ``out``: (N, C_t, H, W). Heo et al., ICCV 2019.
    """

    def __init__(self, channels: int | None = None, kernel_size: int = 1, in_info: list[PortInfo] | None = None):
        super().__init__()
        c_s = channels_of(in_info, 0, "ofd_connector")
        c_t = int(channels) if channels is not None else channels_of(in_info, 1, "ofd_connector")
        k = int(kernel_size)
        self.conv = nn.Conv2d(c_s, c_t, k, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_t)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / (k * k * c_t)))
        self._info = PortInfo("map", c_t, first_info(in_info).stride)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.bn(self.conv(x))

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
