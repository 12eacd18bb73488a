"""MLKD: multi-level logit distillation (Jin et al., CVPR 2023): instance, batch and class alignment.

Each level is summed over several temperatures (MLKD's "prediction augmentation": one prediction per
temperature; the code's temperatures are T, 3, 5, 2, 6 with T = 4, or the base temperature 2 with
logit standardization). With p = softmax(z / T) of a batch (N, C):

* instance: Hinton's KL(p_t || p_s) summed over classes, averaged over the batch, x T^2 (the ``kd`` loss);
* batch: the N x N sample-similarity Gram matrices G = p p^T; sum((G_t - G_s)^2) / N (no T^2);
* class: the C x C class-correlation Gram matrices M = p^T p; sum((M_t - M_s)^2) / C (no T^2).

``mask`` (a ``confidence_mask`` op's output) reproduces the code's confidence masking: the code
multiplies the level's already reduced (scalar) loss by the 0/1 mask and takes the mean, so the loss
is scaled by the fraction of samples (or classes) the mask keeps: mean(mask), about 1/2 for the median
mask. Jin, Wang, Lin. Multi-Level Logit Distillation. CVPR 2023; code: Jin-Ying/Multi-Level-Logit-
Distillation, mdistiller/distillers/KD_ours.py (kd_loss, bc_loss, cc_loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import port, reals
from ..registry import register_loss
from ._util import float32
from .basic import kd

TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


def _kept(mask: torch.Tensor | None) -> float | torch.Tensor:
    """The code's masking of a reduced loss: (loss * mask).mean() == loss * mean(mask)."""
    if mask is None:
        return 1.0
    return (mask if mask.is_floating_point() else mask.float()).mean()


def batch_gram_loss(pred: torch.Tensor, target: torch.Tensor, T: float) -> torch.Tensor:
    """sum((p_t p_t^T - p_s p_s^T)^2) / N with p = softmax(z / T): MLKD's batch level at one temperature."""
    ps, pt = F.softmax(pred / T, dim=1), F.softmax(target / T, dim=1)
    return ((pt @ pt.t() - ps @ ps.t()) ** 2).sum() / pred.shape[0]


def class_gram_loss(pred: torch.Tensor, target: torch.Tensor, T: float) -> torch.Tensor:
    """sum((p_t^T p_t - p_s^T p_s)^2) / C with p = softmax(z / T): MLKD's class level at one temperature."""
    ps, pt = F.softmax(pred / T, dim=1), F.softmax(target / T, dim=1)
    return ((pt.t() @ pt - ps.t() @ ps) ** 2).sum() / pred.shape[1]


@register_loss("mlkd_instance", params={"temperatures": reals(gt=0), "mask": port()})
@float32
def mlkd_instance(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    temperatures: list[float] = TEMPERATURES,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLKD's instance level: sum over T in `temperatures` of KD at T (batchmean, x T^2), x mean(mask).

    pred (student), target (teacher): logits (N, C), raw or standardized (MLKD + LS standardizes
    only this level). mask: a sample confidence mask (N,), see the module docstring. Jin et al.,
    CVPR 2023.
    """
    return sum(kd(pred, target, T=float(t)) for t in temperatures) * _kept(mask)


@register_loss("mlkd_batch", params={"temperatures": reals(gt=0), "mask": port()})
@float32
def mlkd_batch(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    temperatures: list[float] = TEMPERATURES,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLKD's batch level: sum over T of sum((G_t - G_s)^2) / N, G = p p^T (N x N), x mean(mask).

    pred (student), target (teacher): logits (N, C). mask: a sample confidence mask (N,). Jin et al.,
    CVPR 2023 (the code's bc_loss).
    """
    return sum(batch_gram_loss(pred, target, float(t)) for t in temperatures) * _kept(mask)


@register_loss("mlkd_class", params={"temperatures": reals(gt=0), "mask": port()})
@float32
def mlkd_class(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    temperatures: list[float] = TEMPERATURES,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLKD's class level: sum over T of sum((M_t - M_s)^2) / C, M = p^T p (C x C), x mean(mask).

    pred (student), target (teacher): logits (N, C). mask: a class confidence mask (C,). Jin et al.,
    CVPR 2023 (the code's cc_loss).
    """
    return sum(class_gram_loss(pred, target, float(t)) for t in temperatures) * _kept(mask)
