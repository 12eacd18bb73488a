"""MLKD's confidence masks (Jin et al., CVPR 2023): which samples and classes the teacher is least sure of."""

from __future__ import annotations

import torch

from ..params import PROBABILITY, choice
from ..registry import PortInfo, register_op
from .base import Op


@register_op("confidence_mask", params={"level": choice("sample", "class"), "quantile": PROBABILITY})
class ConfidenceMask(Op):
    """Confidence mask of teacher logits (N, C), as MLKD's code builds it from the weak view's teacher.

    p = softmax(z) (temperature 1). level "sample": confidence_i = max_c p_ic, mask_i = confidence_i <=
    median over the batch (N,). level "class": confidence_c = sum_i p_ic, mask_c = confidence_c <= median
    over the classes (C,). The median is the 50th percentile with linear interpolation (NumPy's
    ``percentile(x, 50)``, which the code uses; ``torch.quantile`` here, with no host round trip).
    Output ``out``: the mask as 0/1 floats; no gradient flows through it. The ``mlkd_*`` losses take
    it as their ``mask`` parameter. Jin, Wang, Lin. Multi-Level Logit Distillation. CVPR 2023; code:
    Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py.
    """

    stops_gradient = True

    def __init__(self, level: str = "sample", quantile: float = 0.5):
        super().__init__()
        if level not in ("sample", "class"):
            raise ValueError(f"confidence_mask: level must be 'sample' or 'class', not {level!r}")
        self.level, self.quantile = level, float(quantile)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.detach()
        p = torch.softmax(z if z.dtype == torch.float64 else z.float(), dim=1)  # float64 stays (tests)
        confidence = p.amax(dim=1) if self.level == "sample" else p.sum(dim=0)
        return (confidence <= torch.quantile(confidence, self.quantile)).to(confidence.dtype)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("any")}
