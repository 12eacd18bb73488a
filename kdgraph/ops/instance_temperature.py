"""CTKD's instance-wise temperature: one learned temperature per sample, predicted from the two predictions."""

from __future__ import annotations

import torch
from torch import nn

from ..params import integer, real
from ..registry import PortInfo, register_op
from .base import Op, channels_of


@register_op("instance_temperature", params={"hidden": integer(), "t_min": real(gt=0), "t_range": real(ge=0)})
class InstanceTemperature(Op):
    """CTKD's instance-wise temperature: T_n = t_min + t_range * sigmoid(MLP([z_t[n] || z_s[n]])), shape (N, 1).

    Inputs: teacher logits, student logits (N, C) each. MLP: Linear(2C -> hidden) + ReLU +
    Linear(hidden -> 1), hidden = 256; the logits enter detached (the module learns the temperature;
    the student learns from the loss, as with the global one). Defaults t_min = 1, t_range = 20: T in
    (1, 21) as CTKD's t_start / t_end. Put a ``grl`` op between it and the ``kd`` edge's ``T`` for the
    adversarial curriculum; kd multiplies each sample's KL by its own T_n^2. The module's width and
    depth are not specified beyond "a small MLP" in the paper, hence ``hidden``. Li et al., CTKD,
    AAAI 2023, arXiv:2211.16231 (section on global and instance-wise temperature).
    """

    def __init__(
        self, hidden: int = 256, t_min: float = 1.0, t_range: float = 20.0, in_info: list[PortInfo] | None = None
    ):
        super().__init__()
        c_t, c_s = channels_of(in_info, 0, "instance_temperature"), channels_of(in_info, 1, "instance_temperature")
        self.mlp = nn.Sequential(nn.Linear(c_t + c_s, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), 1))
        self.t_min, self.t_range = float(t_min), float(t_range)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        x = torch.cat([teacher.detach(), student.detach()], dim=1).to(self.mlp[0].weight.dtype)
        return self.t_min + self.t_range * torch.sigmoid(self.mlp(x))  # (N, 1)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("any")}
