"""VID's regressor: the student's map to the mean of a Gaussian over the teacher's, with a learned variance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..params import EPS, flag, integer, real
from ..registry import PortInfo, register_op
from .base import Op, channels_of, first_info


@register_op(
    "vid_regressor",
    params={"mid_channels": integer(null=True), "init_var": real(gt=0), "eps": EPS, "learn_var": flag()},
)
class VIDRegressor(Op):
    """VID's mean regressor Conv1x1-ReLU-Conv1x1-ReLU-Conv1x1 (no biases) plus a per-channel variance.

    Inputs: [student map, teacher map] (the teacher map gives the output width and size); when the
    student map is larger it is average-pooled to the teacher's size first (RepDistiller).
    Widths: C_s -> mid -> mid -> C_t, mid = ``mid_channels`` or C_t (both reference codes).
    Ports: ``out`` the mean mu (N, C_t, H, W); ``var`` the variance (C_t,) =
    softplus(alpha) + eps, alpha initialised so that var starts at ``init_var`` (5.0), eps = 1e-5.
    Feed ``var`` to the ``vid`` loss (``var: this.var``). learn_var: false keeps alpha fixed, which
    is what mdistiller's VID does in effect (its log-scales sit in a plain list, outside the
    optimizer); RepDistiller learns it. Ahn et al., VID, CVPR 2019, arXiv:1904.05835.
    """

    outputs = ("out", "var")

    def __init__(
        self,
        mid_channels: int | None = None,
        init_var: float = 5.0,
        eps: float = 1e-5,
        learn_var: bool = True,
        in_info: list[PortInfo] | None = None,
    ):
        super().__init__()
        c_s, c_t = channels_of(in_info, 0, "vid_regressor"), channels_of(in_info, 1, "vid_regressor")
        mid = int(mid_channels) if mid_channels is not None else c_t
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, c_t, 1, bias=False),
        )
        alpha = torch.full((c_t,), math.log(math.expm1(float(init_var) - float(eps))))  # softplus^-1(init - eps)
        if learn_var:
            self.alpha = nn.Parameter(alpha)
        else:  # a buffer: checkpointed, never optimised
            self.register_buffer("alpha", alpha)
        self.eps = float(eps)
        self._info = {"out": PortInfo("map", c_t, first_info(in_info, 1).stride), "var": PortInfo("any", c_t, None)}

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[-2] > ref.shape[-2]:
            x = F.adaptive_avg_pool2d(x, ref.shape[-2:])
        return {"out": self.regressor(x), "var": F.softplus(self.alpha) + self.eps}

    def port_info(self) -> dict[str, PortInfo]:
        return self._info
