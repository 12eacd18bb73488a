"""Margin-based feature losses: OFD's partial L2 and AB's activation-boundary alternative L2."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import port, real
from ..registry import register_loss
from ._util import float32


@register_loss("ofd", params={"margin": port()})
@float32
def ofd(pred: torch.Tensor, target: torch.Tensor, *, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 between pre-ReLU maps, teacher values clamped below at the margin.

    pred: the connector's output (N, C, H, W); target: the teacher's pre-ReLU map (N, C, H', W'),
    adaptive-average-pooled to (H, W) when it differs (mdistiller); margin: (1, C, 1, 1) or (C,), the
    ``bn_margin`` op. With t_m = max(t, margin): d_p = (s - t_m)^2, except 0 where s <= t_m and
    t <= 0 (the student is already below a negative target). The reference code's three masks:
    (s - m)^2 [s > m, t <= m] + (s - t)^2 [s > t, m < t <= 0] + (s - t)^2 [t > 0].
    Reduction: sum over C, H, W, mean over the batch (``.mean(dim=0).sum()``).
    Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019, Eq. 6.
    """
    if target.shape[-2:] != pred.shape[-2:]:
        target = F.adaptive_avg_pool2d(target, pred.shape[-2:])
    m = margin.to(pred.dtype).reshape(1, -1, 1, 1)
    loss = (
        (pred - m).pow(2) * ((pred > m) & (target <= m)).to(pred.dtype)
        + (pred - target).pow(2) * ((pred > target) & (target > m) & (target <= 0)).to(pred.dtype)
        + (pred - target).pow(2) * (target > 0).to(pred.dtype)
    )
    return loss.mean(dim=0).sum()


@register_loss("ab", params={"margin": real(ge=0)})
@float32
def ab(pred: torch.Tensor, target: torch.Tensor, *, margin: float = 1.0) -> torch.Tensor:
    """AB's alternative L2 on activation boundaries, summed over all elements and divided by the batch.

    pred: the student's pre-ReLU map after the connector (N, C, H, W); target: the teacher's pre-ReLU
    map of the same shape. With mu = margin (1.0):
    (s + mu)^2 [s > -mu, t <= 0] + (s - mu)^2 [s <= mu, t > 0], summed, divided by N (RepDistiller's
    ``ABLoss.criterion_alternative_l2`` / bsz; its per-stage factors 2^(i-n+1) and 3/1000 belong on
    the edge weights). Heo, Lee, Yun, Choi. Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons. AAAI 2019, arXiv:1811.03233, Eq. 4.
    """
    mu = float(margin)
    loss = (pred + mu).pow(2) * ((pred > -mu) & (target <= 0)).to(pred.dtype) + (pred - mu).pow(2) * (
        (pred <= mu) & (target > 0)
    ).to(pred.dtype)
    return loss.sum() / pred.shape[0]
