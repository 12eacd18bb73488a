"""Relational KD (Park et al., CVPR 2019): match pairwise distances and triplet angles of embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import EPS, WEIGHT
from ..registry import register_loss
from ._util import flat, float32


def pairwise_distance(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix (N, N) of rows of e, zero on the diagonal."""
    sq = e.pow(2).sum(dim=1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * e @ e.t()).clamp_min(eps)
    off_diagonal = 1.0 - torch.eye(e.shape[0], dtype=e.dtype, device=e.device)
    return d2.sqrt() * off_diagonal


def _normalised_distance(e: torch.Tensor, eps: float) -> torch.Tensor:
    d = pairwise_distance(e, eps)
    return d / d[d > 0].mean()  # scale-free: divide by the mean distance over distinct pairs


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at every anchor j between the directions to i and k: (N * N * N,)."""
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # u[j, i] = unit(e_i - e_j)
    return torch.bmm(u, u.transpose(1, 2)).reshape(-1)


@register_loss("rkd", params={"distance_weight": WEIGHT, "angle_weight": WEIGHT, "eps": EPS})
@float32
def rkd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """RKD: 25 * smooth-L1 of normalised pairwise distances + 50 * smooth-L1 of triplet angles.

    pred (student), target (teacher): embeddings (N, D_s), (N, D_t), or maps flattened per sample;
    the dimensions may differ. Distances are divided by their mean over distinct pairs; angles are
    the cosines at each anchor of all triplets (N^3 terms: keep N moderate). Both smooth-L1 terms
    are means. Weights 25 / 50 as the paper and RepDistiller. Park et al., CVPR 2019.
    """
    s, t = flat(pred), flat(target)
    loss_d = F.smooth_l1_loss(_normalised_distance(s, eps), _normalised_distance(t, eps))
    loss_a = F.smooth_l1_loss(_angles(s), _angles(t))
    return distance_weight * loss_d + angle_weight * loss_a
