"""Variational information distillation: a Gaussian likelihood of the teacher's map under a learned variance."""

from __future__ import annotations

import torch

from ..params import real
from ..registry import register_loss
from ._util import float32, match_spatial


@register_loss("vid", params={"var": real(gt=0, port=True)})
@float32
def vid(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    var: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """VID: Gaussian negative log-likelihood 0.5 * mean((mu - t)^2 / var_c + log var_c) (the 2*pi term dropped).

    pred: the predicted mean mu, the student map after a ``vid_regressor`` op, (N, C, H, W);
    target: the teacher map t, (N, C, H', W'); when the sizes differ the larger map is
    adaptive-average-pooled to the smaller (the regressor already pools the student side).
    var: the per-channel variance var_c, (C,): the regressor's ``var`` port,
    softplus(alpha_c) + eps, learned through this loss; a number for a fixed variance (var=1 is
    half the mean squared error plus a constant). The mean runs over N*C*H*W, as
    RepDistiller's ``VIDLoss`` and mdistiller's ``vid_loss``; the edge weight is the paper's
    lambda (1 on CIFAR-100 per position). Ahn, Hu, Damianou, Lawrence, Dai. Variational
    Information Distillation for Knowledge Transfer. CVPR 2019, arXiv:1904.05835, Eq. 2 and 4.
    """
    pred, target = match_spatial(pred, target)
    v = var.to(pred.dtype).reshape(1, -1, *([1] * (pred.dim() - 2))) if isinstance(var, torch.Tensor) else float(var)
    log_v = v.log() if isinstance(v, torch.Tensor) else torch.log(torch.tensor(v, dtype=pred.dtype))
    return 0.5 * ((pred - target).pow(2) / v + log_v).mean()
