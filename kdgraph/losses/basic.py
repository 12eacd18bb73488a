"""Cross-entropy and Hinton's KD.

A loss is a function ``loss(pred, target, *, <params>) -> scalar``: ``pred`` is the edge's ``to``
port (the learner), ``target`` its ``from`` port (the knowledge: teacher logits, or ``data.label``).
A loss that declares ``labels`` receives the batch labels; one that declares ``sample_weight``
receives the per-sample weights of an edge's ``sample_weight:`` port.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_loss


def _weighted_mean(per_sample: torch.Tensor, sample_weight: torch.Tensor | None) -> torch.Tensor:
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight.to(per_sample.dtype)).mean()


@register_loss("ce")
def ce(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits (N, C) against integer labels (N,), averaged over the batch."""
    per_sample = F.cross_entropy(pred, target, reduction="none", label_smoothing=label_smoothing)
    return _weighted_mean(per_sample, sample_weight)


@register_loss("kd")
def kd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    T: float | torch.Tensor = 4.0,
    reduction: str = "batchmean",
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) x T^2; batchmean (RepDistiller) or mean (TAKD).

    pred, target: logits (N, C). T: a number, a scalar tensor (a learned temperature) or a tensor
    broadcastable to (N, C) (per-class or per-sample temperatures). reduction: "batchmean" sums
    over classes and averages over the batch; "mean" averages over all N*C elements (TAKD's code).
    """
    log_p_s = F.log_softmax(pred / T, dim=1)
    log_p_t = F.log_softmax(target / T, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    T2 = T * T if not isinstance(T, torch.Tensor) or T.dim() == 0 else (T * T).mean(dim=1)
    per_sample = per_sample * T2
    if reduction == "batchmean":
        return _weighted_mean(per_sample, sample_weight)
    if reduction == "mean":
        return _weighted_mean(per_sample, sample_weight) / pred.shape[1]
    raise ValueError(f"reduction must be 'batchmean' or 'mean', not {reduction!r}")
