"""Feature losses: MSE with the reductions of the reference codes, FitNet hints, attention transfer, cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..params import EPS, choice, real
from ..registry import register_loss
from ._util import flat, float32, match_spatial, same_shape, weighted_mean, weighted_sum

MSE_REDUCTIONS = ("mean", "sum_n", "sum", "masked_sum")


@register_loss("mse", params={"reduction": choice("mean", "sum_n", "sum", "masked_sum")})
@float32
def mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared error between two tensors of one shape; reductions mean, sum_n, sum, masked_sum.

    pred, target: (N, ...) of the same shape ((N, C) and (N, C, 1, 1) count as the same).
    reduction:
      * "mean": over all elements (SimKD, FitNet; ``nn.MSELoss()``);
      * "sum_n": the sum over all elements divided by N (MGD: ``MSELoss(reduction='sum') / N``);
      * "sum": the plain sum over all elements;
      * "masked_sum": TESKD's feature term, sum of (pred - target)^2 over the elements where
        pred > 0 or target > 0 (a plain sum; TESKD weights it by 1e-7).
    sample_weight (N,): multiplies each sample's share before the reduction over the batch.
    """
    target = same_shape(pred, target, "mse")
    sq = flat(pred - target).pow(2)
    if reduction == "masked_sum":
        sq = sq * (flat(pred) > 0).logical_or(flat(target) > 0).to(sq.dtype)
    per_sample = sq.sum(dim=1)
    if reduction == "mean":
        return weighted_mean(per_sample, sample_weight) / sq.shape[1]
    if reduction == "sum_n":
        return weighted_mean(per_sample, sample_weight)
    if reduction in ("sum", "masked_sum"):
        return weighted_sum(per_sample, sample_weight)
    raise ValueError(f"mse: reduction must be one of {', '.join(MSE_REDUCTIONS)}, not {reduction!r}")


@register_loss("fitnet", params={})
@float32
def fitnet(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """FitNet hint: mean squared error between the (connector-mapped) student map and the teacher map.

    pred: the student's map after a ``connector`` op, (N, C_t, H, W); target: the teacher's map
    (N, C_t, H, W). Mean over all elements (RepDistiller's HintLoss). Romero et al., ICLR 2015.
    """
    return mse(pred, target, reduction="mean", sample_weight=sample_weight)


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko's spatial attention: mean over channels of |f|^p, flattened, L2-normalised: (N, H*W)."""
    return F.normalize(f.abs().pow(p).mean(dim=1).reshape(f.shape[0], -1), dim=1)


@register_loss("at", params={"p": real(gt=0)})
@float32
def at(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    p: float = 2.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention transfer: mean of squared differences of L2-normalised spatial attention maps.

    pred (student), target (teacher): maps (N, C_s, H_s, W_s), (N, C_t, H_t, W_t); channel counts
    may differ (attention averages over channels); when the spatial sizes differ the larger map is
    adaptive-average-pooled to the smaller one (RepDistiller). Attention: mean_c |f|^p (p=2), flattened,
    L2-normalised per sample; loss: the mean over N*H*W of the squared differences (RepDistiller's
    ``at_loss``; the paper's beta/2 = 1000/2 belongs on the edge weight). Zagoruyko & Komodakis, ICLR 2017.
    """
    pred, target = match_spatial(pred, target)
    diff = (attention_map(pred, p) - attention_map(target, p)).pow(2).mean(dim=1)
    return weighted_mean(diff, sample_weight)


@register_loss("cosine", params={"eps": EPS})
@float32
def cosine(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float = 1e-8,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - cosine similarity of each sample's flattened pred and target, averaged over the batch."""
    target = same_shape(pred, target, "cosine")
    return weighted_mean(1.0 - F.cosine_similarity(flat(pred), flat(target), dim=1, eps=eps), sample_weight)
