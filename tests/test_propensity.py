"""IPWD's propensity op: inverse-propensity weights, their clip and normalisation, and their use in a graph."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdgraph.catalog import load_builtins
from kdgraph.graph import DataInfo, DistillGraph
from kdgraph.losses.basic import kd
from kdgraph.ops.propensity import Propensity, inverse_propensity
from kdgraph.registry import OPS
from kdgraph.schedule import Schedule
from kdgraph.spec import load_spec


def _label_probs(logits: torch.Tensor, labels: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    return F.softmax(logits / T, dim=1)[torch.arange(len(labels)), labels]


def test_weights_are_the_inverse_propensity_ratio() -> None:
    torch.manual_seed(0)
    machine, human = torch.randn(6, 5) * 3, torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ratio = _label_probs(human, labels) / _label_probs(machine, labels, T=2.0)
    raw = inverse_propensity(machine, human, labels, T=2.0, clip=None, normalize=False)
    assert torch.allclose(raw, ratio, rtol=1e-5)
    normed = inverse_propensity(machine, human, labels, T=2.0, clip=None, normalize=True)
    assert torch.allclose(normed, ratio / ratio.mean(), rtol=1e-5)
    assert normed.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_samples_the_teacher_backs_less_weigh_more() -> None:
    human = torch.zeros(2, 3)  # the label-only head is indifferent: p_human = 1/3 for both samples
    machine = torch.tensor([[6.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # the teacher backs sample 0's label strongly
    w = Propensity(clip=None)(machine, human, torch.tensor([0, 0]))
    assert w[0] < 1.0 < w[1]  # head knowledge down-weighted, tail knowledge up-weighted


def test_clip_bounds_the_ratio_before_normalisation() -> None:
    machine = torch.tensor([[-20.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # p_machine(y=0) ~ 2e-9 for sample 0
    human = torch.zeros(3, 2)
    labels = torch.zeros(3, dtype=torch.long)
    raw = inverse_propensity(machine, human, labels, clip=10.0, normalize=False)
    assert raw[0].item() == pytest.approx(10.0)
    assert raw[1:].tolist() == pytest.approx([1.0, 1.0])
    normed = inverse_propensity(machine, human, labels, clip=10.0)
    assert normed.tolist() == pytest.approx([10 / 4, 1 / 4, 1 / 4])


def test_op_is_registered_detached_and_scheduled() -> None:
    load_builtins()
    assert OPS.get("propensity").obj is Propensity
    machine = torch.randn(4, 10, requires_grad=True)
    human = torch.randn(4, 10, requires_grad=True)
    op = Propensity(T=Schedule.from_spec({"value": 4.0, "warmup": 2}))  # T = 2 at epoch 1, 4 from epoch 2
    op.set_epoch(1)
    w = op(machine, human, torch.tensor([1, 2, 3, 4]))
    assert w.shape == (4,) and not w.requires_grad
    assert Propensity.stops_gradient
    expected = inverse_propensity(machine.detach(), human.detach(), torch.tensor([1, 2, 3, 4]), T=2.0)
    assert torch.allclose(w, expected)
    with pytest.raises(ValueError, match="must both be"):
        op(torch.randn(4, 10), torch.randn(4, 9), torch.tensor([1, 2, 3, 4]))


GRAPH = """
kdgraph: 1
name: ipw_tiny
data: {dataset: synthetic, size: 8, test_size: 4, image_size: 8, classes: 5, batch_size: 4}
nodes:
  teacher: {net: cnn, width: 4, frozen: true}
  student: {net: cnn, width: 4}
  feat:    {op: detach, in: [student.pooled]}
  head:    {op: linear_head, in: [feat.out]}
  ipw:     {op: propensity, in: [teacher.logits, head.out, data.label], clip: 5}
edges:
  - {loss: kd, from: teacher.logits, to: student.logits, T: 2, sample_weight: ipw.out}
  - {loss: ce, from: data.label, to: head.out}
train: {epochs: 1, optimizer: {type: sgd, lr: 0.1}}
deploy: student.logits
"""


def test_graph_weights_each_sample_kd_term(tmp_path: Path) -> None:
    path = tmp_path / "ipw.yaml"
    path.write_text(GRAPH)
    graph = DistillGraph(load_spec(path), DataInfo(num_classes=5, channels=3, image_size=8)).eval()
    assert "ipw" in graph.plan.stages[0].no_grad and "head" in graph.plan.stages[0].trainable
    image, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _, losses = graph(image, labels)
    out = graph.outputs(image, ["teacher.logits", "student.logits", "head.out"])
    w = inverse_propensity(out["teacher.logits"], out["head.out"], labels, clip=5.0)
    assert not torch.allclose(w, torch.ones(4), atol=1e-3)  # the weights really differ per sample
    expected = kd(out["student.logits"], out["teacher.logits"], T=2.0, sample_weight=w)
    assert losses[graph.loss_names().index("kd:teacher->student")].item() == pytest.approx(expected.item(), rel=1e-5)
