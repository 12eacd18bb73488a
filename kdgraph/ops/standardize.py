"""Logit standardization (Sun et al., CVPR 2024): a per-sample Z-score of the logits before softmax."""

from __future__ import annotations

import torch

from ..params import EPS, real
from ..registry import PortInfo, register_op
from .base import Op, first_info


@register_op("standardize", params={"base_T": real(gt=0), "eps": EPS})
class Standardize(Op):
    """Per-sample Z-score of logits: z' = (z - mean(z)) / (std(z) + eps) / base_T.

    Mean and standard deviation are over the classes of each sample (dim 1 of (N, C) logits); the
    standard deviation uses Bessel's correction (divides by C - 1), as the authors' ``normalize``
    (``logit.std(dim=-1)``) does, and eps = 1e-7 is added to it, not under the square root.

    base_T: an optional base temperature folded into the output (default 1: none). The paper's
    method is standardize-then-divide-by-a-base-temperature; its code keeps the division in the
    loss (``--base-temp 2``: KD at T = 2 on standardized logits), so the graphs here standardize
    with base_T = 1 and set the loss's T; base_T is for losses that take no temperature.

    Output ``out``: (N, C), the input's port kind. Sun, Ren, Li, Wang, Cao. Logit Standardization in
    Knowledge Distillation. CVPR 2024, arXiv:2403.01427, Eq. (9) and Algorithm 1; code:
    sunshangquan/logit-standardization-KD, ``normalize`` in mdistiller/distillers/KD.py.
    """

    def __init__(self, base_T: float = 1.0, eps: float = 1e-7, in_info: list[PortInfo] | None = None):
        super().__init__()
        if float(base_T) <= 0:
            raise ValueError(f"standardize: base_T must be positive, not {base_T}")
        self.base_T, self.eps = float(base_T), float(eps)
        self._info = first_info(in_info)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        mean = z.mean(dim=1, keepdim=True)
        std = z.std(dim=1, keepdim=True, correction=1)  # Bessel: / (C - 1)
        out = (z - mean) / (std + self.eps)
        return out / self.base_T if self.base_T != 1.0 else out

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}
