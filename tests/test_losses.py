"""Losses: METHODS.md reference values in float64, reductions by hand, tensor parameters, bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdgraph.catalog import load_builtins
from kdgraph.losses.basic import ce, kd, kl_prob
from kdgraph.losses.dist import dist
from kdgraph.losses.dkd import dkd, nckd, tckd
from kdgraph.losses.feature import at, cosine, fitnet, mse
from kdgraph.losses.relation import rkd
from kdgraph.registry import LOSSES

TOL = 1e-8


@pytest.fixture()
def ref() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """METHODS.md's reference inputs."""
    zs = (3 * torch.sin(torch.arange(40, dtype=torch.float64))).reshape(4, 10)
    zt = (5 * torch.cos(0.7 * torch.arange(40, dtype=torch.float64) + 0.3)).reshape(4, 10)
    return zs, zt, torch.tensor([1, 3, 5, 7])


# --- reference values ---------------------------------------------------------------------------


def test_kd_reference_and_gradient(ref) -> None:
    zs, zt, _ = ref
    zs = zs.clone().requires_grad_()
    loss = kd(zs, zt, T=4)
    loss.backward()
    assert loss.item() == pytest.approx(6.8095214060, abs=TOL)
    assert zs.grad[0, :3].tolist() == pytest.approx([-0.126361961, 0.024098048, 0.100394779], abs=TOL)
    assert kd(zs, zt, T=1).item() == pytest.approx(2.8603047782, abs=TOL)


def test_dkd_reference(ref) -> None:
    zs, zt, y = ref
    assert dkd(zs, zt, labels=y, alpha=1, beta=8, T=4).item() == pytest.approx(55.2545370825, abs=TOL)
    assert tckd(zs, zt, labels=y, T=4).item() == pytest.approx(0.6619167313, abs=TOL)
    assert nckd(zs, zt, labels=y, T=4).item() == pytest.approx(6.8240775439, abs=TOL)


def test_dist_reference(ref) -> None:
    zs, zt, _ = ref
    assert dist(zs, zt, tau=1).item() == pytest.approx(1.7572530669, abs=TOL)


# --- KD variants ----------------------------------------------------------------------------------


def test_kd_matches_kl_div_and_takd_mean(ref) -> None:
    zs, zt, _ = ref
    T = 4.0
    torch_kd = F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="batchmean") * T * T
    assert kd(zs, zt, T=T).item() == pytest.approx(torch_kd.item(), abs=1e-12)
    takd = F.kl_div(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1), reduction="sum") / zs.numel() * T * T
    assert kd(zs, zt, T=T, reduction="mean").item() == pytest.approx(takd.item(), abs=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        kd(zs, zt, reduction="sum")


def test_kd_tensor_temperatures(ref) -> None:
    zs, zt, y = ref
    base = kd(zs, zt, T=4.0).item()
    # a learned scalar temperature: same value, and gradient reaches it
    t = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    loss = kd(zs, zt, T=t)
    loss.backward()
    assert loss.item() == pytest.approx(base, abs=1e-12) and t.grad is not None and t.grad.abs() > 0
    assert kd(zs, zt, T=torch.full((1,), 4.0, dtype=torch.float64)).item() == pytest.approx(base, abs=1e-12)
    # per-class (C,) and per-sample-and-class (N, C) with all entries 4 reduce to the scalar case
    assert kd(zs, zt, T=torch.full((10,), 4.0, dtype=torch.float64)).item() == pytest.approx(base, abs=1e-12)
    assert kd(zs, zt, T=torch.full((4, 10), 4.0, dtype=torch.float64)).item() == pytest.approx(base, abs=1e-12)
    # per-class T: each sample's KL times the mean over classes of T^2
    tc = torch.linspace(1.0, 5.0, 10, dtype=torch.float64)
    p_t, log_p_s = F.softmax(zt / tc, 1), F.log_softmax(zs / tc, 1)
    by_hand = ((p_t * (p_t.log() - log_p_s)).sum(1) * (tc**2).mean()).mean()
    assert kd(zs, zt, T=tc).item() == pytest.approx(by_hand.item(), abs=1e-12)
    # ATS: teacher at per-class T, student at scalar T_student (T^2 from the student's temperature)
    tn = torch.where(F.one_hot(y, 10).bool(), 6.0, 3.0).double()
    p_t, log_p_s = F.softmax(zt / tn, 1), F.log_softmax(zs / 3.0, 1)
    by_hand = ((p_t * (p_t.log() - log_p_s)).sum(1) * 9.0).mean()
    assert kd(zs, zt, T=tn, T_student=3.0).item() == pytest.approx(by_hand.item(), abs=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        kd(zs, zt, T=torch.ones(3, dtype=torch.float64))


def test_sample_weight(ref) -> None:
    zs, zt, y = ref
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    per = torch.stack([kd(zs[i : i + 1], zt[i : i + 1]) for i in range(4)])
    assert kd(zs, zt, sample_weight=w).item() == pytest.approx((per * w).mean().item(), abs=1e-12)
    per_ce = F.cross_entropy(zs, y, reduction="none")
    assert ce(zs, y, sample_weight=w).item() == pytest.approx((per_ce * w).mean().item(), abs=1e-12)


def test_dkd_is_sum_of_its_parts(ref) -> None:
    zs, zt, y = ref
    for a, b, T in ((1.0, 8.0, 4.0), (0.5, 2.0, 2.0)):
        parts = a * tckd(zs, zt, labels=y, T=T) + b * nckd(zs, zt, labels=y, T=T)
        assert dkd(zs, zt, labels=y, alpha=a, beta=b, T=T).item() == pytest.approx(parts.item(), abs=1e-10)


def test_kl_prob_matches_teskd(ref) -> None:
    zs, zt, _ = ref
    T = 3.0
    teskd = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(zs / T, 1), F.softmax(zt / T, 1) + 1e-7) * T * T
    assert kl_prob(zs, zt, T=T).item() == pytest.approx(teskd.item(), abs=1e-12)
    # gradient reaches both sides (TESKD does not detach the backbone)
    a, b = zs.clone().requires_grad_(), zt.clone().requires_grad_()
    kl_prob(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


# --- feature losses -------------------------------------------------------------------------------


def test_mse_reductions_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, 5, generator=g).double()
    sq = (p - t) ** 2
    assert mse(p, t).item() == pytest.approx(sq.mean().item(), abs=1e-12)
    assert mse(p, t, reduction="sum_n").item() == pytest.approx(sq.sum().item() / 3, abs=1e-12)
    assert mse(p, t, reduction="sum").item() == pytest.approx(sq.sum().item(), abs=1e-12)
    # TESKD: sum of squared differences where either side is positive, by an explicit loop
    by_hand = sum(
        (a - b) ** 2 for a, b in zip(p.flatten().tolist(), t.flatten().tolist()) if a > 0 or b > 0
    )
    assert mse(p, t, reduction="masked_sum").item() == pytest.approx(by_hand, abs=1e-10)
    assert fitnet(p, t).item() == pytest.approx(sq.mean().item(), abs=1e-12)
    w = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    assert mse(p, t, sample_weight=w).item() == pytest.approx((sq.mean((1, 2, 3)) * w).mean().item(), abs=1e-12)
    # (N, C) and (N, C, 1, 1) are the same thing (a pooled vector vs a 1x1 map)
    assert mse(p[:, :, 0, 0], t[:, :, :1, :1]).item() == pytest.approx(sq[:, :, 0, 0].mean().item(), abs=1e-12)
    with pytest.raises(ValueError, match=r"pred \(3, 4, 5, 5\) and target \(3, 8, 5, 5\) differ"):
        mse(p, torch.randn(3, 8, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="connector op"):
        mse(p[:, :, 0, 0], torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="reduction"):
        mse(p, t, reduction="median")


def test_at_by_hand_and_sizes() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 8, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 16, 4, 4, generator=g).double()

    def att(f: torch.Tensor) -> torch.Tensor:
        a = f.pow(2).mean(1).reshape(2, -1)
        return a / a.norm(dim=1, keepdim=True)

    assert at(s, t).item() == pytest.approx((att(s) - att(t)).pow(2).mean().item(), abs=1e-12)
    big = torch.randn(2, 16, 8, 8, generator=g, dtype=torch.float64)
    assert at(s, big).item() == pytest.approx(at(s, F.adaptive_avg_pool2d(big, 4)).item(), abs=1e-12)
    assert at(s, s * 3).item() == pytest.approx(0.0, abs=1e-12)


def test_cosine() -> None:
    x = torch.randn(4, 6, dtype=torch.float64)
    assert cosine(x, 2 * x).item() == pytest.approx(0.0, abs=1e-12)
    assert cosine(x, -x).item() == pytest.approx(2.0, abs=1e-12)


def test_rkd_invariances_and_angles() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.randn(5, 7, generator=g, dtype=torch.float64)
    assert rkd(s, 3.0 * s + 0.0).item() == pytest.approx(0.0, abs=1e-10)  # scale-free relations
    t = torch.randn(5, 12, generator=g, dtype=torch.float64)  # different widths are fine
    assert rkd(s, t).item() > 0
    # the angle term alone against an explicit triplet loop
    from kdgraph.losses.relation import _angles

    e = s[:4]
    loop = []
    for j in range(4):
        for i in range(4):
            for k in range(4):
                u, v = e[i] - e[j], e[k] - e[j]
                nu, nv = u.norm(), v.norm()
                loop.append(0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv)))
    assert _angles(e).tolist() == pytest.approx(loop, abs=1e-10)


# --- precision and registry ----------------------------------------------------------------------


def test_losses_under_bf16_autocast(ref) -> None:
    zs, zt, y = ref
    s16, t16 = zs.to(torch.bfloat16), zt.to(torch.bfloat16)
    cases = {
        "kd": lambda a, b: kd(a, b, T=4),
        "dkd": lambda a, b: dkd(a, b, labels=y),
        "dist": lambda a, b: dist(a, b),
        "kl_prob": lambda a, b: kl_prob(a, b),
        "ce": lambda a, b: ce(a, y),
    }
    for name, fn in cases.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fn(s16, t16)
        exact = fn(s16.double(), t16.double())  # same (rounded) inputs, float64 arithmetic
        assert low.dtype == torch.float32 and torch.isfinite(low), name
        assert low.item() == pytest.approx(exact.item(), rel=1e-4), name


def test_registry_docs() -> None:
    load_builtins()
    expected = {"ce", "kd", "kl_prob", "dkd", "tckd", "nckd", "dist", "mse", "fitnet", "at", "rkd", "cosine"}
    assert expected <= set(LOSSES.names())
    for e in LOSSES.entries():
        assert e.description and len(e.description) < 120, e.name
        assert list(e.parameters())[:2] == ["pred", "target"], e.name
