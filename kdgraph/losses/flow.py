"""Losses on the flow between two layers: FSP matrices and KDSVD's singular-vector relations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import integer, port
from ..registry import register_loss
from ._util import float32


@register_loss("fsp", params={})
@float32
def fsp(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FSP: mean squared difference of the student's and teacher's FSP matrices, mean over all N*C_u*C_l entries.

    pred (student), target (teacher): FSP matrices (N, C_u, C_l) from ``fsp_matrix`` op nodes over the
    same pair of positions; the two sides need the same channel counts (RepDistiller raises
    otherwise). RepDistiller sums this over the consecutive stage pairs (feat0-feat1, feat1-feat2,
    feat2-feat3) with weight 1 in a pre-training stage of the student's body (30 epochs), then trains
    with CE alone; the paper's per-pair weight lambda_i = 1 and its 1/N go into the mean. Yim, Joo,
    Bae, Kim. A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
    Transfer Learning. CVPR 2017, Eq. 2.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"fsp: student FSP matrix {tuple(pred.shape)} and teacher's {tuple(target.shape)} differ: "
            "FSP needs the same channel counts at both positions on both sides"
        )
    return (pred - target).pow(2).mean()


def _svd_factors(feat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Leading n right singular vectors (N, C, n) and singular values (N, n) of each sample's (H*W, C) matrix.

    Non-finite entries are set to 0 and both are L2-normalised over their first non-batch axis,
    as KDSVD's code (the normalised values sum-square to 1; for n = 1 the value is 1).
    """
    x = feat.reshape(feat.shape[0], feat.shape[1], -1).transpose(1, 2)  # (N, HW, C)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    v = vh.transpose(1, 2)  # (N, C, min(HW, C))
    finite = lambda t: torch.where(torch.isfinite(t), t, torch.zeros_like(t))  # noqa: E731
    return F.normalize(finite(v)[:, :, :n], dim=1), F.normalize(finite(s)[:, :n], dim=1)


def _aligned(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector with the largest |cosine|, signed to agree: (N, C, k)."""
    cosine = v_s.transpose(1, 2) @ v_t  # (N, k_s, k_t)
    best = cosine.abs().amax(dim=1, keepdim=True)
    pick = torch.where(best == cosine.abs(), torch.sign(cosine), torch.zeros_like(cosine))
    return v_s @ pick


def _rbf(v: torch.Tensor, v_prev: torch.Tensor) -> torch.Tensor:
    """exp(-(v[c] - v_prev[c'])^2 / 8) for every channel pair of the two layers: (N, C, C_prev, k)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / 8.0)


def _svd_side(f_s: torch.Tensor, f_t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's student and teacher vectors, student aligned to teacher, both scaled by the teacher's values."""
    v_t, s_t = _svd_factors(f_t, k)
    v_s, _ = _svd_factors(f_s, k + 3)
    scale = s_t.unsqueeze(1)  # (N, 1, k)
    return _aligned(v_s, v_t) * scale, v_t * scale


@register_loss("kdsvd", params={"pred_prev": port(), "target_prev": port(), "k": integer(le=4096)})
@float32
def kdsvd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    pred_prev: torch.Tensor,
    target_prev: torch.Tensor,
    k: int = 1,
) -> torch.Tensor:
    """KDSVD: squared error of the RBF relations between two layers' leading singular vectors, summed, / N.

    pred, pred_prev: the student's maps at a position and the one before it (ports, e.g.
    ``student.feat2`` and ``pred_prev: student.feat1``); target, target_prev: the teacher's at the
    same positions; each side's channel counts must agree with the other's. Per layer and sample,
    SVD of the (H*W, C) matrix: the teacher's k leading right singular vectors v_t and values s_t,
    the student's k + 3, the student vector with the largest |cosine| to each teacher vector taken
    with its sign; both scaled by the L2-normalised s_t. Relation R[c, c'] = exp(-(v[c] -
    v_prev[c'])^2 / 8) over the channels of the two layers; loss = sum over all entries of
    (R_s - R_t)^2 (non-finite terms dropped) / N. One edge per consecutive pair: RepDistiller and
    mdistiller sum it over (feat1, feat2) and (feat2, feat3) with weight 1, k = 1 (mdistiller's
    ``svd`` reshapes the map as (C*H, W), RepDistiller's as (H*W, C): kdgraph follows the latter,
    the paper's). Lee, Kim, Song. Self-supervised Knowledge Distillation Using Singular Value
    Decomposition. ECCV 2018, arXiv:1807.06819.
    """
    if pred.shape[1] != target.shape[1] or pred_prev.shape[1] != target_prev.shape[1]:
        raise ValueError(
            f"kdsvd: channels differ between student and teacher ({pred_prev.shape[1]}, {pred.shape[1]} "
            f"vs {target_prev.shape[1]}, {target.shape[1]}): KDSVD compares channel-by-channel relations"
        )
    k = int(k)
    v_s, v_t = _svd_side(pred, target, k)
    v_sp, v_tp = _svd_side(pred_prev, target_prev, k)
    sq = (_rbf(v_s, v_sp) - _rbf(v_t, v_tp)).pow(2)
    sq = torch.where(torch.isfinite(sq), sq, torch.zeros_like(sq))
    return sq.sum() / pred.shape[0]
