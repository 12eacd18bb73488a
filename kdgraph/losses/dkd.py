"""Decoupled KD (Zhao et al., CVPR 2022): target-class (TCKD) and non-target-class (NCKD) terms.

With p = softmax(z/T) and g the one-hot target mask:

* TCKD = KL([p_t^T, 1 - p_t^T] || [p_t^S, 1 - p_t^S]) over the two bins (target, all others), the
  bins summed from the softmax as in mdistiller; plain log, no epsilon;
* NCKD = KL(softmax(z^T/T - 1000 g) || softmax(z^S/T - 1000 g)): the target class masked out;

each summed over its bins, averaged over the batch, times T^2. DKD = alpha TCKD + beta NCKD. The
loss warm-up min(epoch/20, 1) of the reference code belongs on the edge weight:
``weight: {value: 1, warmup: 20}``; CE is a separate ``ce`` edge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import TEMPERATURE, real
from ..registry import register_loss
from ._util import float32, t_squared, temperature, weighted_mean


def _target_mask(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits).scatter_(1, labels.long().reshape(-1, 1), 1.0)


def _tckd(pred: torch.Tensor, target: torch.Tensor, g: torch.Tensor, T: float | torch.Tensor) -> torch.Tensor:
    """Per-sample binary KL between (target, non-target) probability masses, without the T^2."""

    def bins(z: torch.Tensor) -> torch.Tensor:
        p = F.softmax(z / T, dim=1)
        return torch.stack([(p * g).sum(dim=1), (p * (1 - g)).sum(dim=1)], dim=1)

    b_s, b_t = bins(pred), bins(target)
    return (torch.xlogy(b_t, b_t) - b_t * torch.log(b_s)).sum(dim=1)  # xlogy: 0 log 0 = 0, as kl_div


def _nckd(pred: torch.Tensor, target: torch.Tensor, g: torch.Tensor, T: float | torch.Tensor) -> torch.Tensor:
    """Per-sample KL among the non-target classes (target logit pushed down by 1000), without the T^2."""
    log_q_s = F.log_softmax(pred / T - 1000.0 * g, dim=1)
    log_q_t = F.log_softmax(target / T - 1000.0 * g, dim=1)
    return (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1)


@register_loss("tckd", params={"T": TEMPERATURE})
@float32
def tckd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    labels: torch.Tensor,
    T: float | torch.Tensor = 4.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """DKD's target-class term: binary KL of (p_target, 1 - p_target), batch mean, x T^2.

    pred (student), target (teacher): logits (N, C); labels (N,) from the batch. T: number or
    scalar tensor (or per-class, as in ``kd``). Zhao et al., Decoupled KD, CVPR 2022.
    """
    t = temperature(T, pred)
    per_sample = _tckd(pred, target, _target_mask(pred, labels), t) * t_squared(t, pred.shape[0])
    return weighted_mean(per_sample, sample_weight)


@register_loss("nckd", params={"T": TEMPERATURE})
@float32
def nckd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    labels: torch.Tensor,
    T: float | torch.Tensor = 4.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """DKD's non-target-class term: KL of softmax(z/T - 1000 g) (target masked), batch mean, x T^2.

    pred (student), target (teacher): logits (N, C); labels (N,) from the batch. T: number or
    scalar tensor. Zhao et al., Decoupled KD, CVPR 2022.
    """
    t = temperature(T, pred)
    per_sample = _nckd(pred, target, _target_mask(pred, labels), t) * t_squared(t, pred.shape[0])
    return weighted_mean(per_sample, sample_weight)


@register_loss("dkd", params={"alpha": real(ge=0, port=True), "beta": real(ge=0, port=True), "T": TEMPERATURE})
@float32
def dkd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    labels: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    beta: float | torch.Tensor = 8.0,
    T: float | torch.Tensor = 4.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoupled KD: alpha * TCKD + beta * NCKD (each batch-mean x T^2); without CE or warm-up.

    pred (student), target (teacher): logits (N, C); labels (N,). Defaults alpha=1, beta=8, T=4
    (mdistiller CIFAR; beta=2 for res56->res20 and res110->res32, 6 for vgg13->vgg8,
    wrn40_2->wrn16_2, wrn40_2->wrn40_1, vgg13->MobileNetV2). Warm-up: the edge weight
    ``{value: 1, warmup: 20}``. Zhao et al., Decoupled KD, CVPR 2022.
    """
    t = temperature(T, pred)
    g = _target_mask(pred, labels)
    per_sample = (alpha * _tckd(pred, target, g, t) + beta * _nckd(pred, target, g, t)) * t_squared(t, pred.shape[0])
    return weighted_mean(per_sample, sample_weight)
