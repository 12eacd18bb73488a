"""Batch-relation losses: the student copies how the teacher relates the samples of a batch (PKT, SP, CC).

Each compares an N x N (or N - 1) relation computed within each side, so the two sides' widths may differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import EPS
from ..registry import register_loss
from ._util import flat, float32


def _unit_rows(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x_i / (||x_i|| + eps), NaNs (from a non-finite input) set to 0, as PKT's code."""
    x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    return torch.where(torch.isnan(x), torch.zeros_like(x), x)


def pkt_affinity(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT's conditional probabilities: cosine similarities scaled to [0, 1], each row normalised to sum 1."""
    u = _unit_rows(flat(x), eps)
    k = (u @ u.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


@register_loss("pkt", params={"eps": EPS})
@float32
def pkt(pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """PKT: KL between the teacher's and student's cosine-affinity distributions, mean over N*N entries.

    pred (student), target (teacher): vectors (N, D_s), (N, D_t) (maps are flattened), the
    penultimate ``pooled`` features in RepDistiller and mdistiller. With
    p_ij = ((cos(x_i, x_j) + 1) / 2) / sum_k ((cos(x_i, x_k) + 1) / 2) for each side:
    loss = mean_ij q_ij * log((q_ij + eps) / (p_ij + eps)), q the teacher's, eps = 1e-7 (also added to
    the norms). The paper's KL sums over j; the reference codes take the mean over all N^2 entries,
    i.e. divide by N^2: their weight 30000 assumes it. Passalis & Tefas. Learning Deep
    Representations with Probabilistic Knowledge Transfer. ECCV 2018, arXiv:1803.10837, Eq. 8-10.
    """
    p, q = pkt_affinity(pred, eps), pkt_affinity(target, eps)
    return (q * torch.log((q + eps) / (p + eps))).mean()


def sp_gram(x: torch.Tensor) -> torch.Tensor:
    """SP's similarity matrix: G = x x^T over flattened samples, each row L2-normalised: (N, N)."""
    f = flat(x)
    return F.normalize(f @ f.t(), dim=1)


@register_loss("sp", params={})
@float32
def sp(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD: ||G_t - G_s||_F^2 / N^2 with G = row-normalised x x^T of the flattened maps.

    pred (student), target (teacher): (N, ...) of any widths (each side's Gram matrix is N x N).
    RepDistiller and mdistiller apply it to the last stage's map (``feat3`` of the CIFAR ResNets,
    the input of the final pooling) with weight 3000. Tung & Mori. Similarity-Preserving Knowledge
    Distillation. ICCV 2019, arXiv:1907.09682, Eq. 2-4.
    """
    n = pred.shape[0]
    return (sp_gram(target) - sp_gram(pred)).pow(2).sum() / (n * n)


@register_loss("cc", params={})
@float32
def cc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Correlation congruence as RepDistiller computes it: mean_i sum_d |e_i - e'_i|_d * |e_{i+1} - e'_{i+1}|_d.

    pred (student), target (teacher): embeddings of one width (N, D), each side's ``pooled``
    features through its own ``linear_embed`` (D = 128); both embeddings learn (put ``detach:
    false`` on the edge so the teacher's embedding is trained too, as RepDistiller's
    trainable_list). With delta_i = |e_i - e'_i| (elementwise), the loss is the mean over the
    N - 1 consecutive pairs (i, i + 1) of the batch of <delta_i, delta_{i+1}>. This is RepDistiller's
    ``Correlation`` (code its author says came from the CC authors), not the paper's Gaussian-kernel
    correlation matrix; weight 0.02 in RepDistiller's scripts. Peng et al. Correlation Congruence for
    Knowledge Distillation. ICCV 2019, arXiv:1904.01802.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"cc: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ; "
            "embed both sides to one width with linear_embed ops"
        )
    delta = flat(pred - target).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()
