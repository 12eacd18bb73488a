"""CRD's NCE loss over the memory-bank scores of the ``crd`` op."""

from __future__ import annotations

import torch

from ..params import EPS, real
from ..registry import register_loss
from ._util import float32


def nce(p: torch.Tensor, n_data: float | torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """-(sum_i log h(p_i0) + sum_i sum_{k>=1} log(1 - h(p_ik))) / N with h(p) = p / (p + K/n_data).

    p: (N, K+1) scores, column 0 the positive. As RepDistiller's ``ContrastLoss``, with the noise
    distribution P_n = 1/n_data: log D1 = log(p_0 / (p_0 + K P_n + eps)) and
    log D0 = log(K P_n / (p_k + K P_n + eps)); eps = 1e-7 sits in both denominators.
    """
    k = p.shape[1] - 1
    noise = k / n_data
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (p[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


@register_loss("crd", params={"n_data": real(ge=1, port=True), "eps": EPS})
@float32
def crd(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    n_data: float | torch.Tensor,
    eps: float = 1e-7,
) -> torch.Tensor:
    """CRD: NCE of the student-anchored scores plus NCE of the teacher-anchored scores (CRD Eq. 18).

    pred: the ``crd`` op's ``student`` port, target: its ``teacher`` port, both (N, K+1) with column 0
    the positive pair (the op's scores, already divided by its normalisation constant Z). Each side's
    term is ``nce``: -(sum_i log h_i0 + sum_{i, k>=1} log(1 - h_ik)) / N, with
    h = p / (p + K/n_data + eps) and 1 - h computed as (K/n_data) / (p + K/n_data + eps), as
    RepDistiller's ContrastLoss. n_data: the memory bank's size (the op's ``n_data`` port, e.g.
    ``contrast.n_data``). Both sides carry gradient into their heads: write the edge with ``detach: false``.
    Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020, arXiv:1910.10699.
    """
    return nce(pred, n_data, eps) + nce(target, n_data, eps)
