"""FSP's flow-of-solution-procedure matrix between two maps of one network."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import PortInfo, register_op
from .base import Op, first_info


def fsp_matrix(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """G[n, j, i] = mean over positions of upper[n, j] * lower[n, i]: (N, C_upper, C_lower).

    The larger map is adaptive-average-pooled to the smaller one's size first (RepDistiller).
    Yim et al., CVPR 2017, Eq. 1.
    """
    if lower.shape[-2:] != upper.shape[-2:]:
        if lower.shape[-2] * lower.shape[-1] > upper.shape[-2] * upper.shape[-1]:
            lower = F.adaptive_avg_pool2d(lower, upper.shape[-2:])
        else:
            upper = F.adaptive_avg_pool2d(upper, lower.shape[-2:])
    n = lower.shape[0]
    lo, up = lower.reshape(n, lower.shape[1], -1), upper.reshape(n, upper.shape[1], -1)
    return up @ lo.transpose(1, 2) / lo.shape[2]


@register_op("fsp_matrix", params={})
class FSPMatrix(Op):
    """FSP matrix of two maps of one net: mean over positions of upper_j * lower_i, (N, C_upper, C_lower).

    Inputs: [lower, upper], e.g. [student.feat0, student.feat1]; the larger map is pooled to the
    smaller's size. No parameters: put one on each side (student and teacher) and compare them
    with the ``fsp`` loss. Yim, Joo, Bae, Kim. A Gift from Knowledge Distillation. CVPR 2017.
    """

    def __init__(self, in_info: list[PortInfo] | None = None):
        super().__init__()
        self._info = PortInfo("any", first_info(in_info, 1).channels, None)

    def forward(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        return fsp_matrix(lower, upper)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
