"""ReviewKD's hierarchical context loss (HCL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import integers
from ..registry import register_loss
from ._util import float32


@register_loss("hcl", params={"levels": integers(le=1024)})
@float32
def hcl(pred: torch.Tensor, target: torch.Tensor, *, levels: list[int] | tuple[int, ...] = (4, 2, 1)) -> torch.Tensor:
    """Hierarchical context loss: MSE of the maps plus MSEs of their pyramid poolings, halving weights.

    pred (a ``review`` output), target (the teacher's feature): (N, C, H, W) of one shape ((N, C) is
    taken as (N, C, 1, 1)). loss = (mse(f_s, f_t) + sum_j 2^-j mse(pool_l_j(f_s), pool_l_j(f_t))) /
    (1 + sum_j 2^-j) over the levels l_j in ``levels`` (4, 2, 1) that are smaller than H (the others are
    skipped and do not count in j); mse averages over all elements; pool_l: adaptive average pooling
    to l x l. mdistiller's ``hcl_loss`` for one level (its sum over levels is one edge per level here).
    Chen, Liu, Zhao, Jia. Distilling Knowledge via Knowledge Review. CVPR 2021, arXiv:2104.09044.
    """
    if pred.dim() == 2:
        pred = pred.reshape(*pred.shape, 1, 1)
    target = target.reshape(pred.shape)
    h = pred.shape[2]
    loss, weight, total = F.mse_loss(pred, target), 1.0, 1.0
    for level in levels:
        if level >= h:
            continue
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(pred, level), F.adaptive_avg_pool2d(target, level))
        total += weight
    return loss / total
