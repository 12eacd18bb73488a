"""CC's linear embedding of a feature vector."""

from __future__ import annotations

import torch
from torch import nn

from ..params import integer
from ..registry import PortInfo, register_op
from .base import Op, channels_of


@register_op("linear_embed", params={"dim": integer()})
class LinearEmbed(Op):
    """A linear map (with bias) of the flattened input to ``dim`` features: (N, dim). RepDistiller's LinearEmbed.

    Input: a vector (N, C) such as ``pooled`` (a map is flattened, which needs its full size in
    ``in_channels``; pool it first). dim: 128 (RepDistiller's feat_dim). CC embeds both the
    student's and the teacher's pooled features, each with its own trainable embedding.
    """

    def __init__(self, dim: int = 128, in_info: list[PortInfo] | None = None):
        super().__init__()
        self.linear = nn.Linear(channels_of(in_info, 0, "linear_embed"), int(dim))
        self._info = PortInfo("vector", int(dim), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(x.shape[0], -1))

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
