"""train.log_with: trackers through Accelerate's tracker API, logging what metrics.jsonl holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdgraph.cli import main
from kdgraph.trackers import scalars

TINY = """\
kdgraph: 1
name: tiny
data: {dataset: digits, batch_size: 64, augment: false, subset: 256}
nodes:
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train: {epochs: 1, log_every: 2, optimizer: {type: sgd, lr: 0.05}, progress: false, log_with: [tensorboard]}
deploy: student.logits
"""


def test_scalars_of_a_record() -> None:
    record = {"kind": "train", "step": 4, "loss": 1.5, "losses": {"ce": 1.5}, "lr": {"student": 0.05},
              "images_per_s": 100.0, "stage": "main"}
    assert scalars(record) == {"loss": 1.5, "images_per_s": 100.0, "losses/ce": 1.5, "lr/student": 0.05}
    assert scalars({"kind": "eval", "top1": {"s.logits": 90.0}, "top5": {"s.logits": 99.0}}) == {
        "top1/s.logits": 90.0, "top5/s.logits": 99.0}


def test_tensorboard_gets_the_losses_and_top1(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["run", "tiny.yaml", "--out", "run", "--quiet"]) == 0
    (events,) = list((tmp_path / "run" / "tiny").glob("events.out.tfevents.*"))  # (hparams go in a subfolder)
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "losses/ce:data->student", "images_per_s", "top1/student.logits"} <= tags
    assert [e.step for e in acc.Scalars("loss")] == [2, 4]  # 256 images / 64 = 4 steps, logged every 2


def test_a_missing_tracker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    (tmp_path / "tiny.yaml").write_text(TINY.replace("[tensorboard]", "[wandb]"))
    assert main(["run", "tiny.yaml", "--out", "run"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "train.log_with: tracker wandb is not installed (pip install 'kdgraph[wandb]'" in line
