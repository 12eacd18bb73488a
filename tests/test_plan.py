"""The planner: order, gradient routing, no_grad, param groups, last use, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.errors import PlanError
from kdgraph.graph import DataInfo, DistillGraph
from kdgraph.spec import load_spec

from .conftest import GRAPHS

CIFAR = DataInfo(100, 3, 32)
TINY = DataInfo(10, 3, 8)


def graph_of(tmp_path: Path, text: str, info: DataInfo = TINY) -> DistillGraph:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return DistillGraph(load_spec(path), info)


def test_slkd_plan() -> None:
    plan = DistillGraph(load_spec(GRAPHS / "slkd.yaml"), CIFAR).plan
    stage = plan.stages[0]
    assert plan.order.index("teacher") < plan.order.index("student")
    assert "teacher" in stage.no_grad and "teacher" in stage.frozen
    assert stage.trainable == ["slt1", "slt2", "student"]
    assert plan.param_nodes == ["slt1", "slt2", "student"]
    # the fused SL-teacher only feeds a detached KD source: no gradient is needed through it
    assert "slt" in stage.no_grad and "slt1" not in stage.no_grad
    # every value is freed exactly once, after its last reader
    freed = [k for step in stage.program for k in step.free]
    assert len(freed) == len(set(freed))
    assert "teacher.logits" in freed and "slt.out" in freed
    last_teacher = max(i for i, s in enumerate(stage.program) if "teacher.logits" in s.free)
    readers = [i for i, s in enumerate(stage.program) if s.kind == "loss" and s.name.startswith("kd:teacher")]
    assert last_teacher == max(readers)


HEAD = """\
kdgraph: 1
name: t
data: {dataset: synthetic, image_size: 8}
"""


def test_cycle_is_reported_as_a_path(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
nodes:
  a: {op: mix, in: [b.out, data.image]}
  b: {op: mix, in: [a.out, data.image]}
  s: {net: mlp, image_size: 8, in_channels: 3}
edges:
  - {loss: ce, from: data.label, to: s.logits}
"""
    )
    with pytest.raises(PlanError) as err:
        graph_of(tmp_path, text)
    assert "cycle: a -> b -> a" in str(err.value)
    assert ":5: nodes.a.in: cycle" in str(err.value)


def test_unreached_trainable_node_and_dead_loss(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
nodes:
  t: {net: mlp, frozen: true}
  s: {net: mlp}
  lonely: {net: mlp}
edges:
  - {loss: ce, from: data.label, to: s.logits}
  - {loss: kd, from: s.logits, to: t.logits}
"""
    )
    with pytest.raises(PlanError) as err:
        graph_of(tmp_path, text)
    text_err = str(err.value)
    assert "nodes.lonely: trainable node 'lonely' is reached by no loss" in text_err
    assert "edges[1]: loss 'kd:s->t' reaches no trainable parameter" in text_err


def test_missing_ports_and_deploy(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
nodes:
  s: {net: cnn}
edges:
  - {loss: ce, from: data.label, to: s.logit}
  - {loss: mse, from: s.feat9, to: s.feat1}
deploy: s.out
"""
    )
    with pytest.raises(PlanError) as err:
        graph_of(tmp_path, text)
    msg = str(err.value)
    assert "edges[0].to: node 's' has no port 'logit' (did you mean 'logits'?)" in msg
    assert "edges[1].from: node 's' has no port 'feat9'" in msg
    assert "deploy: node 's' has no port 'out'" in msg


def test_detach_false_routes_gradient_into_the_source(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
nodes:
  a: {net: mlp}
  b: {net: mlp}
edges:
  - {loss: kd, from: a.logits, to: b.logits, detach: false}
"""
    )
    stage = graph_of(tmp_path, text).plan.stages[0]
    assert stage.trainable == ["a", "b"] and stage.detach_target == {"kd:a->b": False}
    with pytest.raises(PlanError, match="trainable node 'a' is reached by no loss"):
        graph_of(tmp_path, text.replace(", detach: false", ""))


def test_stages_freeze_what_they_do_not_train(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
nodes:
  t: {net: mlp}
  s: {net: mlp}
edges:
  - {loss: ce, from: data.label, to: t.logits, name: teacher_ce}
  - {loss: kd, from: t.logits, to: s.logits, name: distill}
stages:
  - {name: teach, edges: [teacher_ce]}
  - {name: learn, edges: [distill]}
"""
    )
    plan = graph_of(tmp_path, text).plan
    assert plan.stages[0].trainable == ["t"] and plan.stages[0].order == ["t"]
    assert plan.stages[1].trainable == ["s"] and "t" in plan.stages[1].no_grad


def test_a_loss_reading_labels_keeps_them_alive(tmp_path: Path) -> None:
    # dkd reads data.label itself: the labels must outlive the CE edge that runs before it
    text = HEAD + """\
nodes:
  t: {net: mlp, frozen: true}
  s: {net: mlp}
edges:
  - {loss: ce, from: data.label, to: s.logits}
  - {loss: dkd, from: t.logits, to: s.logits}
"""
    graph = graph_of(tmp_path, text)
    image, label = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    total, losses = graph(image, label, torch.arange(4))
    assert losses.shape == (2,) and torch.isfinite(total)
    freed = [k for step in graph.plan.stages[0].program for k in step.free]
    assert freed.count("data.label") == 1
    last = max(i for i, s in enumerate(graph.plan.stages[0].program) if "data.label" in s.free)
    assert graph.plan.stages[0].program[last].name == "dkd:t->s"
