"""MLKD (Jin et al., CVPR 2023) and MLKD + LS: the graphs' losses on fixed logits against the authors' formulas.

The reference below is written independently from the formulas of the authors' forward_train
(Jin-Ying/Multi-Level-Logit-Distillation KD_ours.py; sunshangquan/logit-standardization-KD MLKD.py): plain
torch and NumPy, one term at a time, with the code's quirks spelled out. The graph side evaluates
graphs/mlkd.yaml's (and mlkd_ls.yaml's) own op nodes and edges on the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdgraph.catalog import load_builtins
from kdgraph.losses.mlkd import batch_gram_loss, class_gram_loss, mlkd_batch, mlkd_class, mlkd_instance
from kdgraph.ops.mlkd import ConfidenceMask
from kdgraph.registry import LOSSES, OPS
from kdgraph.spec import load_spec

from .conftest import GRAPHS

N, C = 6, 5


def logits(seed: int, scale: float) -> torch.Tensor:
    return scale * torch.randn(N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


TW, TS, SW, SS = logits(1, 4.0), logits(2, 4.0), logits(3, 2.0), logits(4, 2.0)  # teacher/student, weak/strong
Y = torch.tensor([0, 1, 2, 3, 4, 0])


# ----------------------------------------------------------------------------- the reference, from the formulas


def z_score(z: torch.Tensor) -> torch.Tensor:
    return (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))


def ref_kd(s, t, T, stand=False):
    if stand:
        s, t = z_score(s), z_score(t)
    log_ps, pt = torch.log_softmax(s / T, 1), torch.softmax(t / T, 1)
    return (pt * (torch.log(pt) - log_ps)).sum(1).mean() * T**2


def ref_cc(s, t, T):  # class correlation: C x C
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / C


def ref_bc(s, t, T):  # sample similarity: N x N
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / N


def reference(T0: float, ce_w: float, w: float, stand: bool) -> float:
    """The authors' total loss: ce + kd (weak, masked; strong, whose T = 2 and 6 terms read weak) + cc + bc."""
    p = torch.softmax(TW, 1)
    conf = p.max(1).values.numpy()
    mask = torch.from_numpy(conf <= np.percentile(conf, 50)).double()
    cls = p.sum(0).numpy()
    class_mask = torch.from_numpy(cls <= np.percentile(cls, 50)).double()
    temps = [T0, 3.0, 5.0, 2.0, 6.0]
    ce = ce_w * (torch.nn.functional.cross_entropy(SW, Y) + torch.nn.functional.cross_entropy(SS, Y))
    kd_weak = sum(w * (ref_kd(SW, TW, T, stand) * mask).mean() for T in temps)
    kd_strong = sum(w * ref_kd(SS, TS, T, stand) for T in temps[:3])
    kd_strong += sum(w * ref_kd(SW, TW, T, stand) for T in temps[3:])  # the code's T = 2, 6: the weak view
    cc_weak = sum(w * (ref_cc(SW, TW, T) * class_mask).mean() for T in temps)
    bc_weak = sum(w * (ref_bc(SW, TW, T) * mask).mean() for T in temps)
    return float(ce + kd_weak + kd_strong + cc_weak + bc_weak)


# ----------------------------------------------------------------------------- the graph's side


def graph_total(name: str) -> float:
    """sum of weight x loss over the graph file's edges, its op nodes evaluated on the fixed logits."""
    load_builtins()
    spec = load_spec(GRAPHS / name)
    values = {"data.label": Y, "teacher.logits": TW, "student.logits": SW,
              "teacher_strong.out": TS, "student_strong.out": SS}
    for node in spec.nodes.values():
        if node.kind == "op" and node.type != "call":
            values[f"{node.name}.out"] = OPS.get(node.type).obj(**node.params)(*[values[p] for p in node.inputs])
    total = 0.0
    for e in spec.edges:
        params = {k: values[v] if k in e.port_params else v for k, v in e.params.items()}
        total += float(e.weight) * float(LOSSES.get(e.loss).obj(values[e.pred], values[e.target], **params))
    return total


def test_mlkd_graph_loss_matches_the_authors_formulas() -> None:
    want = reference(T0=4.0, ce_w=0.1, w=0.9, stand=False)
    assert graph_total("mlkd.yaml") == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_mlkd_ls_graph_loss_matches_the_authors_formulas() -> None:
    want = reference(T0=2.0, ce_w=0.1, w=9.0, stand=True)
    assert graph_total("mlkd_ls.yaml") == pytest.approx(want, rel=1e-10, abs=1e-12)
    assert want != pytest.approx(reference(T0=2.0, ce_w=0.1, w=9.0, stand=False))  # standardization matters


def test_levels_and_masks_one_by_one() -> None:
    T = 4.0
    assert float(batch_gram_loss(SW, TW, T)) == pytest.approx(float(ref_bc(SW, TW, T)), rel=1e-12)
    assert float(class_gram_loss(SW, TW, T)) == pytest.approx(float(ref_cc(SW, TW, T)), rel=1e-12)
    assert float(mlkd_instance(SW, TW, temperatures=[T, 2.0])) == pytest.approx(
        float(ref_kd(SW, TW, T) + ref_kd(SW, TW, 2.0)), rel=1e-12)
    sample = ConfidenceMask("sample")(TW)
    assert sample.shape == (N,) and sample.sum() == N // 2  # distinct confidences: half at or below the median
    klass = ConfidenceMask("class")(TW)
    assert klass.shape == (C,) and klass.sum() == (C + 1) // 2  # odd count: the median itself is kept
    assert float(mlkd_batch(SW, TW, temperatures=[T], mask=sample)) == pytest.approx(float(ref_bc(SW, TW, T)) / 2)
    assert float(mlkd_class(SW, TW, temperatures=[T], mask=klass)) == pytest.approx(float(ref_cc(SW, TW, T)) * 3 / 5)
    # gradient reaches the student only through the loss, never through the mask
    s = SW.clone().requires_grad_(True)
    mlkd_class(s, TW, mask=ConfidenceMask("class")(s)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
