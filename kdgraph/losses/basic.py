"""Cross-entropy, Hinton's KD and TESKD's branch KL.

A loss is a function ``loss(pred, target, *, <params>) -> scalar``: ``pred`` is the edge's ``to``
port (the learner), ``target`` its ``from`` port (the knowledge: teacher logits, or ``data.label``).
A loss that declares ``labels`` receives the batch labels; one that declares ``sample_weight``
receives the per-sample weights of an edge's ``sample_weight:`` port. Parameters arrive as numbers
or as tensors (a parameter fed from a port, e.g. a learned temperature). The engine detaches the
``from`` side unless the edge says ``detach: false``; losses never detach.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import EPS, PROBABILITY, TEMPERATURE, choice, real
from ..registry import register_loss
from ._util import float32, t_squared, temperature, weighted_mean


@register_loss("ce", params={"label_smoothing": PROBABILITY})
@float32
def ce(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of logits (N, C) against integer labels (N,), averaged over the batch."""
    per_sample = F.cross_entropy(pred, target.long(), reduction="none", label_smoothing=float(label_smoothing))
    return weighted_mean(per_sample, sample_weight)


@register_loss(
    "kd",
    params={"T": TEMPERATURE, "T_student": real(gt=0, port=True, null=True), "reduction": choice("batchmean", "mean")},
)
@float32
def kd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    T: float | torch.Tensor = 4.0,
    T_student: float | torch.Tensor | None = None,
    reduction: str = "batchmean",
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton KD: KL(softmax(t/T) || softmax(s/T)) x T^2; batchmean (RepDistiller) or mean (TAKD).

    pred (student), target (teacher): logits (N, C).

    T: the teacher's temperature. A number; a one-element tensor (CTKD's learned global
    temperature, gradient flows into it); a (C,) tensor of per-class temperatures or an (N, C)
    tensor per sample and class (ATS: a higher temperature on the target class, see the
    ``class_temperature`` op); an (N, 1) tensor per sample. A 1-D tensor always means per-class.
    T_student: the student's temperature, same forms; default: the same as T.

    The T^2 factor (which keeps gradient magnitudes independent of T) uses the student's
    temperature: T^2 for a scalar; for a per-class or per-sample temperature, each sample's loss is
    multiplied by the mean over classes of its T^2.

    reduction: "batchmean" sums over classes and averages over the batch (RepDistiller, mdistiller);
    "mean" averages over all N*C elements (TAKD's code; C times smaller). sample_weight (N,)
    multiplies each sample's term before the batch mean (IPWD's inverse-propensity weights).
    Hinton et al. 2015, arXiv:1503.02531.
    """
    n = pred.shape[0]
    t_teacher = temperature(T, target)
    t_student = t_teacher if T_student is None else temperature(T_student, pred)
    log_p_s = F.log_softmax(pred / t_student, dim=1)
    log_p_t = F.log_softmax(target / t_teacher, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * t_squared(t_student, n)
    if reduction == "batchmean":
        return weighted_mean(per_sample, sample_weight)
    if reduction == "mean":
        return weighted_mean(per_sample, sample_weight) / pred.shape[1]
    raise ValueError(f"kd: reduction must be 'batchmean' or 'mean', not {reduction!r}")


@register_loss("kl_prob", params={"T": TEMPERATURE, "eps": EPS})
@float32
def kl_prob(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    T: float | torch.Tensor = 4.0,
    eps: float = 1e-7,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """TESKD's branch KL: T^2 * KL_batchmean(softmax(target/T) + eps || softmax(pred/T)).

    pred (a branch), target (the backbone): logits (N, C). As in TESKD's code,
    ``T^2 * KLDivLoss('batchmean')(log_softmax(pred/T), softmax(target/T) + 1e-7)``: the teacher's
    probabilities get eps added (not renormalised) before the KL, i.e. per sample
    sum_c (q_c + eps) * (log(q_c + eps) - log p_c), averaged over the batch. TESKD trains the
    backbone through this loss too: put ``detach: false`` on the edge. T: number or scalar tensor
    (TESKD's code runs with 4, its --temperature default). Li et al., TESKD, arXiv:2110.00329.
    """
    t = temperature(T, target)
    q = F.softmax(target / t, dim=1) + eps
    log_p = F.log_softmax(pred / t, dim=1)
    per_sample = (q * (q.log() - log_p)).sum(dim=1) * t_squared(t, pred.shape[0])
    return weighted_mean(per_sample, sample_weight)
