"""VID, PKT, SP, CC, NST, FSP and KDSVD against their formulas, in float64 on fixed inputs, to 1e-10.

Each reference is computed here independently, in numpy with explicit loops over samples and channels,
from the formula the docstring states (the paper's equation as RepDistiller / mdistiller compute it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdgraph.losses.flow import fsp, kdsvd
from kdgraph.losses.nst import nst
from kdgraph.losses.similarity import cc, pkt, sp
from kdgraph.losses.vid import vid
from kdgraph.ops.embedding import LinearEmbed
from kdgraph.ops.flow import FSPMatrix
from kdgraph.ops.vid import VIDRegressor
from kdgraph.registry import PortInfo

TOL = 1e-10


def fixed(*shape: int, a: float = 1.0, b: float = 0.3) -> torch.Tensor:
    """Deterministic float64 input: a * sin(b * k + 0.1) + 0.5 * cos(k) over the flat index k."""
    k = torch.arange(math.prod(shape), dtype=torch.float64)
    return (a * torch.sin(b * k + 0.1) + 0.5 * torch.cos(k)).reshape(shape)


def block_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling for an integer ratio: the mean of each block (N, C, H, W) -> (N, C, size, size)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_vid_is_the_gaussian_nll_with_per_channel_variance() -> None:
    mu, t = fixed(3, 4, 2, 2), fixed(3, 4, 2, 2, a=2.0, b=0.7)
    var = torch.tensor([0.5, 1.5, 2.0, 5.0], dtype=torch.float64)
    m, tt, v = mu.numpy(), t.numpy(), var.numpy()
    terms = [0.5 * ((m[n, c, i, j] - tt[n, c, i, j]) ** 2 / v[c] + math.log(v[c]))
             for n in range(3) for c in range(4) for i in range(2) for j in range(2)]
    assert vid(mu, t, var=var).item() == pytest.approx(sum(terms) / len(terms), abs=TOL)
    # the teacher map larger than the prediction: pooled to its size
    big = fixed(3, 4, 4, 4, a=2.0)
    pooled = block_mean(big.numpy(), 2)
    terms = [0.5 * ((m[n, c, i, j] - pooled[n, c, i, j]) ** 2 / v[c] + math.log(v[c]))
             for n in range(3) for c in range(4) for i in range(2) for j in range(2)]
    assert vid(mu, big, var=var).item() == pytest.approx(sum(terms) / len(terms), abs=TOL)
    # var = 1: half the mean squared error
    assert vid(mu, t).item() == pytest.approx(0.5 * float(((m - tt) ** 2).mean()), abs=TOL)


def test_vid_regressor_starts_at_var_5_and_has_repdistillers_parameter_count() -> None:
    op = VIDRegressor(in_info=[PortInfo("map", 64, 4), PortInfo("map", 256, 8)])
    x, ref = torch.randn(2, 64, 8, 8), torch.randn(2, 256, 4, 4)
    out = op(x, ref)
    assert out["out"].shape == (2, 256, 4, 4)  # the larger student map pooled to the teacher's size
    assert torch.allclose(out["var"], torch.full((256,), 5.0), atol=1e-6)
    # RepDistiller's VIDLoss(64, 256, 256): three bias-free 1x1 convs 64*256 + 256*256 + 256*256 and a log_scale of 256
    assert sum(p.numel() for p in op.parameters()) == 64 * 256 + 256 * 256 + 256 * 256 + 256 == 147712
    fixed_var = VIDRegressor(learn_var=False, in_info=[PortInfo("map", 64), PortInfo("map", 256)])
    assert sum(p.numel() for p in fixed_var.parameters()) == 147712 - 256 and "alpha" in fixed_var.state_dict()
    vid(out["out"], ref, var=out["var"]).backward()
    assert op.alpha.grad is not None and op.alpha.grad.abs().sum() > 0  # the variance learns through the loss


def test_pkt_is_the_kl_of_cosine_affinities() -> None:
    s, t = fixed(5, 6), fixed(5, 9, a=1.5, b=0.45)
    eps = 1e-7

    def affinity(x: np.ndarray) -> np.ndarray:
        u = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = np.array([[(u[i] @ u[j] + 1) / 2 for j in range(len(x))] for i in range(len(x))])
        return k / k.sum(1, keepdims=True)

    p, q = affinity(s.numpy()), affinity(t.numpy())
    expected = np.mean([[q[i, j] * math.log((q[i, j] + eps) / (p[i, j] + eps)) for j in range(5)] for i in range(5)])
    assert pkt(s, t).item() == pytest.approx(expected, abs=TOL)
    assert pkt(t, t).item() == pytest.approx(0.0, abs=TOL)


def test_sp_is_the_frobenius_distance_of_normalised_grams() -> None:
    s, t = fixed(4, 3, 2, 2), fixed(4, 5, 2, 2, a=0.8, b=1.1)

    def gram(x: np.ndarray) -> np.ndarray:
        f = x.reshape(len(x), -1)
        g = np.array([[f[i] @ f[j] for j in range(len(f))] for i in range(len(f))])
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    expected = ((gram(t.numpy()) - gram(s.numpy())) ** 2).sum() / 16
    assert sp(s, t).item() == pytest.approx(expected, abs=TOL)


def test_cc_is_repdistillers_consecutive_sample_product() -> None:
    s, t = fixed(5, 7), fixed(5, 7, a=1.3, b=0.9)
    d = np.abs(s.numpy() - t.numpy())
    expected = np.mean([sum(d[i, k] * d[i + 1, k] for k in range(7)) for i in range(4)])
    assert cc(s, t).item() == pytest.approx(expected, abs=TOL)
    with pytest.raises(ValueError, match="linear_embed"):
        cc(s, fixed(5, 8))


def test_linear_embed_is_repdistillers_linear_embed() -> None:
    op = LinearEmbed(in_info=[PortInfo("vector", 256)])
    assert sum(p.numel() for p in op.parameters()) == 256 * 128 + 128  # nn.Linear(256, 128)
    assert op(torch.randn(3, 256)).shape == (3, 128)


def test_nst_is_the_polynomial_mmd_of_channel_patterns() -> None:
    s, t = fixed(2, 3, 4, 4), fixed(2, 5, 2, 2, a=1.7, b=0.5)
    fs = block_mean(s.numpy(), 2).reshape(2, 3, 4)  # the larger (student) map pooled to 2 x 2
    ft = t.numpy().reshape(2, 5, 4)
    fs = fs / np.linalg.norm(fs, axis=2, keepdims=True)
    ft = ft / np.linalg.norm(ft, axis=2, keepdims=True)

    def k_mean(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([(a[n, i] @ b[n, j]) ** 2 for n in range(2) for i in range(len(a[0]))
                              for j in range(len(b[0]))]))

    expected = k_mean(ft, ft) + k_mean(fs, fs) - 2 * k_mean(fs, ft)
    assert nst(s, t).item() == pytest.approx(expected, abs=TOL)
    assert nst(t, t).item() == pytest.approx(0.0, abs=TOL)


def test_fsp_matrix_and_loss() -> None:
    lower, upper = fixed(2, 3, 4, 4), fixed(2, 5, 2, 2, a=1.2, b=0.8)
    op = FSPMatrix(in_info=[PortInfo("map", 3), PortInfo("map", 5)])
    g = op(lower, upper)
    lo = block_mean(lower.numpy(), 2).reshape(2, 3, 4)  # the larger (lower) map pooled to the upper's 2 x 2
    up = upper.numpy().reshape(2, 5, 4)
    expected = np.array([[[np.mean(up[n, j] * lo[n, i]) for i in range(3)] for j in range(5)] for n in range(2)])
    assert g.shape == (2, 5, 3)
    assert np.abs(g.numpy() - expected).max() < TOL
    other = op(fixed(2, 3, 4, 4, a=0.6), fixed(2, 5, 2, 2, b=0.2))
    assert fsp(g, other).item() == pytest.approx(float(((g - other).numpy() ** 2).mean()), abs=TOL)
    with pytest.raises(ValueError, match="same channel counts"):
        fsp(g, g[:, :4])


def _kdsvd_reference(fs: list[np.ndarray], ft: list[np.ndarray], k: int = 1) -> float:
    """KDSVD as the paper and RepDistiller state it, with numpy's SVD and explicit loops."""

    def svd(f: np.ndarray, n_vec: int) -> tuple[np.ndarray, np.ndarray]:
        vs, ss = [], []
        for x in f:  # each sample's (H*W, C) matrix
            _, s, vh = np.linalg.svd(x.reshape(x.shape[0], -1).T, full_matrices=False)
            v = vh.T[:, :n_vec]
            vs.append(v / np.linalg.norm(v, axis=0, keepdims=True))
            ss.append(s[:n_vec] / np.linalg.norm(s[:n_vec]))
        return np.stack(vs), np.stack(ss)

    def layer(f_s: np.ndarray, f_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v_t, s_t = svd(f_t, k)
        v_s, _ = svd(f_s, k + 3)
        aligned = np.zeros_like(v_t)
        for n in range(len(v_t)):
            for j in range(k):
                cos = [v_s[n, :, i] @ v_t[n, :, j] for i in range(k + 3)]
                best = int(np.argmax(np.abs(cos)))
                aligned[n, :, j] = np.sign(cos[best]) * v_s[n, :, best]
        return aligned * s_t[:, None, :], v_t * s_t[:, None, :]

    total = 0.0
    prev = None
    for f_s, f_t in zip(fs, ft):
        cur = layer(f_s, f_t)
        if prev is not None:
            (vs, vt), (vsp, vtp) = cur, prev
            for n in range(len(vs)):
                for c in range(vs.shape[1]):
                    for cp in range(vsp.shape[1]):
                        for j in range(k):
                            rs = math.exp(-((vs[n, c, j] - vsp[n, cp, j]) ** 2) / 8)
                            rt = math.exp(-((vt[n, c, j] - vtp[n, cp, j]) ** 2) / 8)
                            total += (rs - rt) ** 2 / len(vs)
        prev = cur
    return total


def test_kdsvd_matches_the_svd_relations_by_hand() -> None:
    fs = [fixed(2, 4, 4, 4, b=0.37), fixed(2, 6, 2, 2, a=1.4, b=0.61)]
    ft = [fixed(2, 4, 4, 4, a=0.9, b=0.23), fixed(2, 6, 2, 2, a=1.1, b=0.83)]
    got = kdsvd(fs[1], ft[1], pred_prev=fs[0], target_prev=ft[0]).item()
    assert got == pytest.approx(_kdsvd_reference([x.numpy() for x in fs], [x.numpy() for x in ft]), abs=TOL)
    assert got > 0
    same = kdsvd(ft[1], ft[1], pred_prev=ft[0], target_prev=ft[0]).item()
    assert same == pytest.approx(0.0, abs=TOL)  # the student's top vector aligns to the teacher's own
    with pytest.raises(ValueError, match="channels differ"):
        kdsvd(fixed(2, 5, 2, 2), ft[1], pred_prev=fs[0], target_prev=ft[0])
