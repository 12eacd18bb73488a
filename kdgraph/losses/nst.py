"""Neuron selectivity transfer: match the distributions of the channels' spatial activation patterns (MMD)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_loss
from ._util import float32, match_spatial


def channel_patterns(f: torch.Tensor) -> torch.Tensor:
    """Each channel's activation over the map, L2-normalised over positions: (N, C, H*W)."""
    return F.normalize(f.reshape(f.shape[0], f.shape[1], -1), dim=2)


def poly2_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over samples and channel pairs of the kernel k(a_i, b_j) = (a_i . b_j)^2 (d = 2, c = 0)."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


@register_loss("nst", params={})
@float32
def nst(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NST: squared MMD with a degree-2 polynomial kernel between the channel patterns of two maps.

    pred (student), target (teacher): maps (N, C_s, H, W), (N, C_t, H', W'), widths may differ;
    the larger map is adaptive-average-pooled to the smaller one's size. With f_i a channel's
    activations over positions, L2-normalised: loss = mean k(t_i, t_j) + mean k(s_i, s_j) -
    2 mean k(s_i, t_j), k(x, y) = (x . y)^2, each mean over the batch and the channel pairs
    (RepDistiller's and mdistiller's ``nst_loss`` with full_loss; the teacher term is a constant
    for the student). Weight 50 per stage, on the three stage outputs. Huang & Wang. Like What You
    Like: Knowledge Distill via Neuron Selectivity Transfer. arXiv:1707.01219, Eq. 5 and 6.
    """
    pred, target = match_spatial(pred, target)
    s, t = channel_patterns(pred), channel_patterns(target)
    return poly2_mean(t, t) + poly2_mean(s, s) - 2.0 * poly2_mean(s, t)
