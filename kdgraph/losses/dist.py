"""DIST (Huang et al., NeurIPS 2022): KD by Pearson correlation of probabilities, across and within classes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import EPS, TEMPERATURE, WEIGHT
from ..registry import register_loss
from ._util import float32


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b: cosine of the row-centred vectors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@register_loss("dist", params={"beta": WEIGHT, "gamma": WEIGHT, "tau": TEMPERATURE, "eps": EPS})
@float32
def dist(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float | torch.Tensor = 4.0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """DIST: beta tau^2 (1 - mean_n pearson(p_s, p_t)) + gamma tau^2 (1 - mean_c pearson over the batch).

    pred (student), target (teacher): logits (N, C); p = softmax(z / tau). inter: the Pearson
    correlation across classes of each sample, averaged over samples; intra: the same on the
    transposed (C, N) probabilities, i.e. across samples per class. eps = 1e-8 in the denominator as
    the reference code. CIFAR recipe: CE + 2 * DIST with tau=4, beta=gamma=1 (the default here).
    Per-sample weights do not apply (the intra term mixes samples). Huang et al., arXiv:2205.10536.
    """
    p_s = F.softmax(pred / tau, dim=1)
    p_t = F.softmax(target / tau, dim=1)
    inter = 1.0 - pearson_rows(p_s, p_t, eps).mean()
    intra = 1.0 - pearson_rows(p_s.t(), p_t.t(), eps).mean()
    return tau * tau * (beta * inter + gamma * intra)
