"""Logit standardization: the op against a hand computation, and its place in KD (Sun et al., CVPR 2024)."""

from __future__ import annotations

import math

import torch

from kdgraph.losses.basic import kd
from kdgraph.ops.standardize import Standardize


def test_standardize_matches_a_hand_computation() -> None:
    z = [[1.0, 2.0, 4.0], [-3.0, 0.0, 0.5]]
    want = []
    for row in z:  # mean, Bessel-corrected std (divide by C - 1), eps on the std
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        want.append([(v - mean) / (std + 1e-7) for v in row])
    got = Standardize()(torch.tensor(z, dtype=torch.float64))
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    # row 0 by hand: mean 7/3, std sqrt(7/3) = 1.5275252316519468
    assert abs(got[0, 0].item() - (1 - 7 / 3) / (math.sqrt(7 / 3) + 1e-7)) < 1e-12


def test_base_temperature_divides_and_scale_shift_invariance() -> None:
    z = 3 * torch.sin(torch.arange(40, dtype=torch.float64)).reshape(4, 10)
    plain = Standardize()(z)
    assert torch.allclose(Standardize(base_T=2.0)(z), plain / 2, rtol=0, atol=1e-12)
    assert torch.allclose(Standardize()(5 * z + 7), plain, rtol=0, atol=1e-6)  # the point of the method
    assert torch.allclose(plain.std(dim=1), torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_kd_on_standardized_logits_equals_the_authors_kd_loss() -> None:
    # the authors' kd_loss(logit_stand=True, T=2): both sides standardized, then KD at T, x T^2
    zs = 3 * torch.sin(torch.arange(40, dtype=torch.float64)).reshape(4, 10)
    zt = 5 * torch.cos(0.7 * torch.arange(40, dtype=torch.float64) + 0.3).reshape(4, 10)

    def z_score(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(-1, keepdim=True)) / (1e-7 + x.std(-1, keepdim=True))

    ps, pt = torch.log_softmax(z_score(zs) / 2, 1), torch.softmax(z_score(zt) / 2, 1)
    want = (pt * (pt.log() - ps)).sum(1).mean() * 4
    op = Standardize()
    assert abs(kd(op(zs), op(zt), T=2.0).item() - want.item()) < 1e-12
