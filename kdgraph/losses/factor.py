"""Factor transfer's loss between the student's and the teacher's factors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import real
from ..registry import register_loss
from ._util import float32, match_spatial


def factor_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """RepDistiller's FT factor: mean over channels of f^p, flattened, L2-normalised: (N, H*W)."""
    return F.normalize(f.pow(p).mean(dim=1).reshape(f.shape[0], -1))


@register_loss("ft", params={"p1": real(gt=0), "p2": real(gt=0)})
@float32
def ft(pred: torch.Tensor, target: torch.Tensor, *, p1: float = 2.0, p2: float = 1.0) -> torch.Tensor:
    """Factor transfer: mean |F(s) - F(t)|^p2 with F(f) = normalise(mean_c f^p1) (RepDistiller's FactorTransfer).

    pred: the translator's output (N, C', H, W); target: the paraphraser's ``factor`` (N, C'', H', W');
    when the sizes differ the larger map is adaptive-average-pooled to the smaller (RepDistiller).
    p1 = 2, p2 = 1: the L1 distance of the normalised factor maps, averaged over N x H x W (the paper's
    Eq. 3 with p = 1, on RepDistiller's channel-pooled factors). Kim, Park, Kwak, NeurIPS 2018,
    arXiv:1802.04977.
    """
    pred, target = match_spatial(pred, target)
    diff = factor_map(pred, p1) - factor_map(target, p1)
    return diff.abs().mean() if float(p2) == 1.0 else diff.pow(p2).mean()
