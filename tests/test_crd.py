"""CRD: the NCE loss against RepDistiller's formula, the heads' size, the memory bank's rules, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kdgraph.losses.crd import crd, nce
from kdgraph.ops.crd import CRDMemory
from kdgraph.registry import PortInfo
from kdgraph.spec import load_spec
from kdgraph.train import Interrupted, Trainer

from .conftest import records, same


def reference_contrast_loss(x: list[list[float]], n_data: int) -> float:
    """RepDistiller's ContrastLoss.forward (crd/criterion.py), written out in plain Python floats."""
    eps, m = 1e-7, len(x[0]) - 1
    pn = 1.0 / n_data
    total = 0.0
    for row in x:
        total += math.log(row[0] / (row[0] + m * pn + eps))
        total += sum(math.log(m * pn / (p + m * pn + eps)) for p in row[1:])
    return -total / len(x)


def scores(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 6, generator=g, dtype=torch.float64) * 2e-4  # p ~ exp(s/T)/Z is of order 1/n_data


def test_nce_matches_repdistillers_contrast_loss() -> None:
    p_s, p_t = scores(0), scores(1)
    n_data = 50_000
    expected = reference_contrast_loss(p_s.tolist(), n_data) + reference_contrast_loss(p_t.tolist(), n_data)
    assert crd(p_s, p_t, n_data=n_data).item() == pytest.approx(expected, abs=1e-10, rel=0)
    assert nce(p_s, torch.tensor(float(n_data), dtype=torch.float64)).item() == pytest.approx(
        reference_contrast_loss(p_s.tolist(), n_data), abs=1e-10, rel=0)


def op(n: int = 20, k: int = 7, dim: int = 4, **kw) -> CRDMemory:
    torch.manual_seed(0)
    return CRDMemory(feat_dim=dim, nce_k=k, n_data=n, in_info=[PortInfo("vector", 5), PortInfo("vector", 6)], **kw)


def test_heads_have_repdistillers_size_for_resnet32x4_to_resnet8x4() -> None:
    # RepDistiller's Embed(256, 128) twice (s_dim = t_dim = 256, the pooled last stage): 2 x (256*128 + 128)
    m = CRDMemory(in_info=[PortInfo("vector", 256), PortInfo("vector", 256)], num_train=50_000)
    assert sum(p.numel() for p in m.parameters()) == 65_792
    assert m.memory_s.shape == m.memory_t.shape == (50_000, 128)
    assert m.k == 16384 and m.t == 0.07 and m.m == 0.5
    stdv = 1 / math.sqrt(128 / 3)  # the reference's uniform init range
    assert m.memory_s.abs().max() <= stdv and m.memory_s.abs().max() > 0.99 * stdv


def test_scores_normalisation_and_memory_update_follow_the_reference() -> None:
    m = op()
    m.train()
    f_s, f_t = torch.randn(3, 5), torch.randn(3, 6)
    index, label = torch.tensor([4, 9, 13]), torch.tensor([0, 1, 0])
    bank_s, bank_t = m.memory_s.clone(), m.memory_t.clone()
    torch.manual_seed(5)
    out = m(f_s, f_t, index, label)
    seen = m.labels.clone()
    m.labels.fill_(-1)  # as before the step: no row seen yet
    torch.manual_seed(5)
    idx = m.contrast_index(index, label)  # the same draw again
    m.labels.copy_(seen)
    assert torch.equal(idx[:, 0], index) and idx.shape == (3, 8)
    v_s, v_t = m.embed_s(f_s), m.embed_t(f_t)
    assert torch.allclose(v_s.norm(dim=1), torch.ones(3))
    raw_s = torch.exp(torch.einsum("nkd,nd->nk", bank_t[idx], v_s) / 0.07)
    raw_t = torch.exp(torch.einsum("nkd,nd->nk", bank_s[idx], v_t) / 0.07)
    z = torch.stack([raw_s.mean() * 20, raw_t.mean() * 20])  # Z = mean score x n_data, first batch
    assert torch.allclose(m.Z, z) and torch.allclose(out["student"], raw_s / z[0])
    assert torch.allclose(out["teacher"], raw_t / z[1]) and out["n_data"].item() == 20
    moved = 0.5 * bank_s[index] + 0.5 * v_s.detach()
    assert torch.allclose(m.memory_s[index], moved / moved.norm(dim=1, keepdim=True))
    others = torch.ones(20, dtype=torch.bool)
    others[index] = False
    assert torch.equal(m.memory_s[others], bank_s[others]) and torch.equal(m.labels[index], label)
    # Z stays what the first batch set
    z_first = m.Z.clone()
    m(torch.randn(3, 5), torch.randn(3, 6), torch.tensor([1, 2, 3]), label)
    assert torch.equal(m.Z, z_first)


def test_eval_mode_leaves_the_bank_alone() -> None:
    m = op()
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.randn(3, 5), torch.randn(3, 6), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert same(before, m.state_dict())


def test_negatives_come_from_other_classes_once_labels_are_known() -> None:
    m = op(n=40, k=500)
    m.labels.copy_(torch.arange(40) % 2)  # rows seen: even rows class 0, odd rows class 1
    idx = m.contrast_index(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert (idx[0, 1:] % 2 == 1).all() and (idx[1, 1:] % 2 == 0).all()
    uniform = op(n=40, k=500, negatives="uniform")
    uniform.labels.copy_(m.labels)
    drawn = uniform.contrast_index(torch.tensor([0]), torch.tensor([0]))
    assert (drawn[0, 1:] % 2 == 0).any() and (drawn[0, 1:] % 2 == 1).any()


GRAPH = """\
kdgraph: 1
name: crd_tiny
data: {dataset: synthetic, size: 48, test_size: 16, image_size: 6, channels: 1, classes: 3, batch_size: 8}
nodes:
  teacher: {net: mlp, hidden: [12], frozen: true}
  student: {net: mlp, hidden: [8], dropout: 0.2}
  contrast: {op: crd, in: [student.pooled, teacher.pooled, data.index, data.label], feat_dim: 4, nce_k: 10}
edges:
  - {loss: ce, from: data.label, to: student.logits}
  - {name: crd, loss: crd, from: contrast.teacher, to: contrast.student, weight: 0.8, detach: false,
     n_data: contrast.n_data}
train:
  epochs: 2
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  checkpoint_every: 4
  log_every: 1
  progress: false
deploy: student.logits
"""


def test_memory_bank_resumes_bitwise_after_an_interruption(tmp_path: Path) -> None:
    path = tmp_path / "crd_tiny.yaml"
    path.write_text(GRAPH)
    spec = load_spec(path)
    Trainer(spec, tmp_path / "straight", log=lambda *_: None).run()
    with pytest.raises(Interrupted):  # stopped mid-epoch (6 steps an epoch), after a checkpoint at step 4
        Trainer(spec, tmp_path / "resumed", log=lambda *_: None, stop_after=9).run()
    Trainer(spec, tmp_path / "resumed", log=lambda *_: None, resume=True).run()
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)["graph"]
    b = torch.load(tmp_path / "resumed" / "final.pt", weights_only=True)["graph"]
    assert same(a, b)
    assert a["nodes.contrast.Z"].min() > 0  # set on the first batch, and carried across the resume
    assert (a["nodes.contrast.labels"] >= 0).all()  # every row was seen and updated
    fresh = Trainer(spec, tmp_path / "fresh", log=lambda *_: None)
    fresh._prepare()
    assert not torch.equal(fresh.graph.state_dict()["nodes.contrast.memory_s"], a["nodes.contrast.memory_s"])

    def strip(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rs]

    assert strip(records(tmp_path / "straight")) == strip(records(tmp_path / "resumed"))


def test_bank_size_comes_from_the_training_split() -> None:
    from kdgraph.data import data_info

    def train_size_of(cfg: dict) -> int | None:
        return data_info(cfg).num_train

    assert train_size_of({"dataset": "cifar100"}) == 50_000
    assert train_size_of({"dataset": "cifar100", "subset": 256}) == 256
    assert train_size_of({"dataset": "digits"}) == 1437  # the fixed digits split
    synthetic = {"dataset": "synthetic", "size": 8, "classes": 2, "channels": 1, "image_size": 4}
    assert train_size_of({**synthetic, "subset": 20}) == 8
    assert train_size_of({"dataset": "imagefolder", "root": "x"}) is None
    with pytest.raises(ValueError, match="give n_data"):
        CRDMemory(in_info=[PortInfo("vector", 4), PortInfo("vector", 4)], num_train=None)


DDP_GRAPH = """\
kdgraph: 1
name: crd_ddp
data: {dataset: synthetic, size: 32, test_size: 16, image_size: 6, channels: 1, classes: 3, batch_size: 8,
       augment: false}
nodes:
  teacher: {net: mlp, hidden: [12], frozen: true}
  student: {net: mlp, hidden: [8]}
  contrast: {op: crd, in: [student.pooled, teacher.pooled, data.index, data.label], feat_dim: 4, nce_k: 10}
edges:
  - {loss: ce, from: data.label, to: student.logits}
  - {name: crd, loss: crd, from: contrast.teacher, to: contrast.student, weight: 0.0, detach: false,
     n_data: contrast.n_data}
train:
  epochs: 1
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
  progress: false
deploy: student.logits
"""


@pytest.mark.slow
def test_two_processes_update_the_bank_with_every_process_rows(tmp_path: Path) -> None:
    """2 processes x batch 4 leave the bank 1 process x batch 8 leaves (the NCE weighted 0, so the nets agree)."""
    import os
    import shutil
    import subprocess
    import sys

    from .conftest import REPO

    graph = tmp_path / "crd_ddp.yaml"
    graph.write_text(DDP_GRAPH)
    env = {**os.environ, "KDGRAPH_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    exe = shutil.which("torchrun")
    torchrun = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    cmd = [*torchrun, "--standalone", "--nproc_per_node", "2", "-m", "kdgraph", "run", str(graph), "--out",
           str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    Trainer(load_spec(graph), tmp_path / "one", log=lambda *_: None).run()
    a = torch.load(tmp_path / "two" / "final.pt", weights_only=True)["graph"]
    b = torch.load(tmp_path / "one" / "final.pt", weights_only=True)["graph"]
    assert (b["nodes.contrast.labels"] >= 0).all()  # one epoch saw every row
    for key in ("nodes.contrast.memory_s", "nodes.contrast.memory_t", "nodes.contrast.labels"):
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-5), key


def test_relax_mode_takes_a_positive_of_the_same_class() -> None:
    m = op(n=40, k=5, mode="relax")
    assert torch.equal(m.contrast_index(torch.tensor([3, 8]), torch.tensor([1, 0]))[:, 0], torch.tensor([3, 8]))
    m.labels.copy_(torch.arange(40) % 4)  # every row seen: row r has class r % 4
    idx = m.contrast_index(torch.arange(40), torch.arange(40) % 4)
    assert torch.equal(idx[:, 0] % 4, torch.arange(40) % 4)  # a positive of its own class
    assert not torch.equal(idx[:, 0], torch.arange(40))  # not always the sample itself
    assert (idx[:, 1:] % 4 != (torch.arange(40) % 4)[:, None]).all()  # negatives of other classes
