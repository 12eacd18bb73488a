"""Training end to end: the loss falls, frozen nodes stay bitwise, resume is exact, stages and inits work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.spec import load_spec
from kdgraph.train import Interrupted, Trainer

from .conftest import GRAPHS, SMOKE, records

TINY = """\
kdgraph: 1
name: tiny
data: {dataset: synthetic, size: 128, test_size: 64, image_size: 8, classes: 4, batch_size: 16}
nodes:
  teacher: {net: mlp, hidden: [32], frozen: true}
  student: {net: mlp, hidden: [16], dropout: 0.2}
  helper:  {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
  - {loss: ce, from: data.label, to: helper.logits}
train:
  epochs: 3
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}
  lr_schedule: {type: step, milestones: [2], gamma: 0.1}
  eval: [student.logits, helper.logits]
  log_every: 4
  checkpoint_every: 5
  progress: false
deploy: student.logits
"""


def tiny_spec(tmp_path: Path, overrides: list[str] | None = None):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return load_spec(path, overrides or [])



def test_tiny_run_trains_what_it_should(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    trainer = Trainer(spec, tmp_path / "run", log=lambda *_: None)
    trainer._prepare()  # build once to read the initial weights the run will start from
    before = {k: v.clone() for k, v in trainer.graph.state_dict().items()}
    summary = Trainer(spec, tmp_path / "run", log=lambda *_: None).run()
    after = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["graph"]
    for key, value in before.items():
        if key.startswith("nodes.teacher."):
            assert torch.equal(value, after[key]), key  # frozen: bitwise unchanged
    for node in ("student", "helper"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(f"nodes.{node}.")), node
    train = [r for r in records(tmp_path / "run") if r["kind"] == "train"]
    assert train[-1]["losses"]["ce:data->helper"] < train[0]["losses"]["ce:data->helper"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[0]["lr"] == {"student": 0.1, "helper": 0.1} and train[-1]["lr"]["student"] == pytest.approx(0.01)
    assert set(summary["final"]["top1"]) == {"student.logits", "helper.logits"}
    assert (tmp_path / "run" / "spec.yaml").exists() and (tmp_path / "run" / "run.json").exists()


@pytest.mark.slow
def test_resume_is_bitwise_equal(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    Trainer(spec, tmp_path / "straight", log=lambda *_: None).run()
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "resumed", log=lambda *_: None, stop_after=11).run()
    Trainer(spec, tmp_path / "resumed", log=lambda *_: None, resume=True).run()
    a = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)["graph"]
    b = torch.load(tmp_path / "resumed" / "final.pt", weights_only=True)["graph"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def strip(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "peak_memory_mb")} for r in rs]

    assert strip(records(tmp_path / "straight")) == strip(records(tmp_path / "resumed"))


def test_resume_refuses_a_changed_graph(tmp_path: Path) -> None:
    from kdgraph.errors import CheckpointError

    with pytest.raises(Interrupted):
        Trainer(tiny_spec(tmp_path), tmp_path / "run", log=lambda *_: None, stop_after=3).run()
    with pytest.raises(CheckpointError, match="different graph"):
        Trainer(tiny_spec(tmp_path, ["train.epochs=4"]), tmp_path / "run", log=lambda *_: None, resume=True).run()


@pytest.mark.slow
def test_init_from_checkpoint_and_from_graph(tmp_path: Path) -> None:
    teacher_graph = tmp_path / "teacher.yaml"
    teacher_graph.write_text(
        TINY.replace("name: tiny", "name: tiny_teacher")
        .split("edges:")[0]
        .replace("frozen: true", "frozen: false")
        .replace("  student: {net: mlp, hidden: [16], dropout: 0.2}\n", "")
        .replace("  helper:  {net: cnn, width: 4}\n", "")
        + "edges:\n  - {loss: ce, from: data.label, to: teacher.logits}\n"
        "train: {epochs: 1, progress: false}\ndeploy: teacher.logits\n"
    )
    spec = tiny_spec(tmp_path, ["+nodes.teacher.init={from: teacher.yaml}", "train.epochs=1"])
    Trainer(spec, tmp_path / "run", log=lambda *_: None).run()
    cached = list((tmp_path / "cache").glob("tiny_teacher-*/final.pt"))
    assert len(cached) == 1
    trained = torch.load(cached[0], weights_only=True)["graph"]
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["graph"]
    assert torch.equal(trained["nodes.teacher.fc.weight"], final["nodes.teacher.fc.weight"])
    # a RepDistiller-style checkpoint file: weights under 'model'
    torch.save(
        {"model": {k[len("nodes.teacher.") :]: v for k, v in trained.items() if k.startswith("nodes.teacher.")}},
        tmp_path / "ckpt_epoch_240.pth",
    )
    spec = tiny_spec(tmp_path, ["+nodes.teacher.init={checkpoint: ckpt_epoch_240.pth, key: model}", "train.epochs=1"])
    Trainer(spec, tmp_path / "run2", log=lambda *_: None).run()
    final2 = torch.load(tmp_path / "run2" / "final.pt", weights_only=True)["graph"]
    assert torch.equal(trained["nodes.teacher.fc.weight"], final2["nodes.teacher.fc.weight"])


@pytest.mark.slow
def test_slkd_runs_a_few_steps_on_synthetic_data(tmp_path: Path) -> None:
    spec = load_spec(GRAPHS / "slkd.yaml", [*SMOKE, "~nodes.teacher.init", "train.epochs=1"])
    summary = Trainer(spec, tmp_path / "slkd", log=lambda *_: None).run()
    assert set(summary["final"]["top1"]) == {"student.logits", "slt.out"}
    losses = [r for r in records(tmp_path / "slkd") if r["kind"] == "train"][-1]["losses"]
    assert len(losses) == 7 and all(v == v for v in losses.values())
