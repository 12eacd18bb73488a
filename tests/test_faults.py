"""Numerical faults, full disks and existing run folders: a clear error, and nothing already saved is lost."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch

from kdgraph import checkpoint as ckpt
from kdgraph.checkpoint import load_latest, save_checkpoint
from kdgraph.errors import CheckpointError, RunError

# 4 batches an epoch; the KD temperature is 4 in epoch 1 and 1e-300 from epoch 2 on (a positive value, so validate
# accepts it; the logits / T overflow), so the KD loss is NaN from step 5 on
GRAPH = """\
kdgraph: 1
name: faulty
data: {dataset: synthetic, size: 32, test_size: 16, image_size: 8, channels: 1, classes: 4, batch_size: 8}
nodes:
  teacher: {net: mlp, hidden: [16], frozen: true}
  student: {net: mlp, hidden: [8], dropout: 0.2}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.5}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.5, T: {linear: [8, 1.0e-300], epochs: 2}}
train:
  epochs: 3
  checkpoint_every: 3
  log_every: 2
  progress: false
deploy: student.logits
"""


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Runs compared bitwise use one thread (conftest.one_thread)."""


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "faulty.yaml"
    path.write_text(GRAPH)
    return path


def cli(*argv: str) -> tuple[int, str]:
    """Exit status and stderr of `kdgraph ...` run in this process."""
    from kdgraph.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- NaN / Inf


def test_nan_loss_stops_naming_edge_and_step_and_keeps_last_good_checkpoint(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, err = cli("run", str(graph), "--out", str(run))
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"{graph}:9: edges[1]: loss edge 'kd:teacher->student' became NaN/Inf at step 5;")
    assert "Last good checkpoint: step 4" in lines[0] and "train.on_nan: skip" in lines[0]
    state = load_latest(run / "checkpoints")  # the epoch-1 checkpoint: intact, finite, before the NaN
    assert state["position"] == {"stage": 0, "epoch": 2, "batch": 0, "step": 4, "setup_done": True}
    assert finite(state["graph"])
    assert not (run / "final.pt").exists()


def test_inf_in_the_weighted_sum_is_caught_too(graph: Path, tmp_path: Path) -> None:
    """Finite losses, a finite weight whose product overflows (.inf itself is refused at validate): the
    total is named, the run stops."""
    code, err = cli("run", str(graph), "--out", str(tmp_path / "run"), "edges[0].weight=1.5e308", "edges[1].T=4")
    assert code == 2
    assert "the weighted sum of the losses became NaN/Inf at step 1" in err


def test_on_nan_skip_skips_the_bad_steps(graph: Path, tmp_path: Path) -> None:
    """Every step after epoch 1 has a NaN KD loss: skipped, so the weights stay those of epoch 1."""
    code, err = cli("run", str(graph), "--out", str(tmp_path / "skip"), "+train.on_nan=skip")
    assert code == 0, err
    code, err = cli("run", str(graph), "--out", str(tmp_path / "one"), "train.epochs=1")
    assert code == 0, err
    skipped, one_epoch = (torch.load(tmp_path / d / "final.pt", weights_only=True)["graph"] for d in ("skip", "one"))
    assert finite(skipped)
    assert all(torch.equal(skipped[k], one_epoch[k]) for k in skipped)
    steps = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "train"][-1] == 12  # the run went on to the end


# ----------------------------------------------------------------------------- run folders


def test_existing_run_dir_is_refused_unless_forced(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("run", str(graph), "--out", str(run), "train.epochs=1", "edges[1].T=4")[0] == 0
    before = (run / "metrics.jsonl").read_text()
    code, err = cli("run", str(graph), "--out", str(run), "train.epochs=1", "edges[1].T=4")
    assert code == 2 and "exists and is not empty" in err and "--force" in err
    assert (run / "metrics.jsonl").read_text() == before  # untouched
    code, err = cli("run", str(graph), "--out", str(run), "train.epochs=1", "edges[1].T=4", "--force")
    assert code == 0, err
    assert (run / "metrics.jsonl").read_text().count("\n") == before.count("\n")  # fresh, not appended


def test_force_never_empties_a_folder_that_is_not_a_run(graph: Path, tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    code, err = cli("run", str(graph), "--out", str(folder), "--force")
    assert code == 2 and "not a kdgraph run directory" in err
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    code, err = cli("run", "--resume", str(tmp_path))
    assert (
        code == 2
        and err == f"{tmp_path} is not a run directory (no run.json); start it with kdgraph run GRAPH --out DIR\n"
    )


# ----------------------------------------------------------------------------- disk faults


def _fail_on_call(n: int, real, err: int = errno.ENOSPC):
    """A stand-in for `real` whose n-th call (counting from 1) raises OSError(err)."""
    calls = {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return fake


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    # replace #1: the frozen teacher's weights (written once); #2, #3: the step-0 checkpoint and its
    # latest.json; #4: the step-3 checkpoint fails
    monkeypatch.setattr(ckpt.os, "replace", _fail_on_call(4, os.replace))
    code, err = cli("run", str(graph), "--out", str(run), "edges[1].T=4")
    assert code == 2
    assert re.match(rf"could not write {run / 'checkpoints'}/step-000000003-[0-9a-f]{{16}}\.pt \(No space left", err)
    assert "the previous checkpoint is kept" in err and "Traceback" not in err
    state = load_latest(run / "checkpoints")
    assert state["position"]["step"] == 0 and finite(state["graph"])
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]  # no half-written file left


def test_read_only_checkpoint_folder_is_reported(graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder (simulated: this may run as root) fails the first write with a clear line."""
    import builtins

    run = tmp_path / "run"
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if "checkpoints" in str(file) and any(m in mode for m in "wax"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only_open)
    code, err = cli("run", str(graph), "--out", str(run), "edges[1].T=4")
    assert code == 2 and "(Read-only file system)" in err and "Traceback" not in err
    assert not run.exists()  # nothing was saved, so the failed run leaves no folder


def test_disk_full_while_logging_metrics(graph: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    run = tmp_path / "run"
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    code, err = cli("run", str(graph), "--out", str(run), "edges[1].T=4")
    assert code == 2 and f"could not write {run / 'metrics.jsonl'} (No space left on device)" in err
    assert load_latest(run / "checkpoints")["position"]["step"] == 0


# ----------------------------------------------------------------------------- checkpoint files


def test_crash_between_checkpoint_and_pointer_keeps_the_old_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two saves at one step: the second never overwrites the file latest.json still names."""
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, {"v": torch.tensor([1.0])}, 10)
    real = ckpt.atomic_write_bytes

    def crash_on_pointer(path: Path, blob: bytes, **where) -> None:
        if path.name == "latest.json":
            raise RunError("killed")  # the process dies after the new file, before the pointer
        real(path, blob, **where)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", crash_on_pointer)
    with pytest.raises(RunError):
        save_checkpoint(folder, {"v": torch.tensor([2.0])}, 10)
    monkeypatch.undo()
    assert load_latest(folder)["v"].item() == 1.0
    save_checkpoint(folder, {"v": torch.tensor([3.0])}, 10)
    assert load_latest(folder)["v"].item() == 3.0


def test_only_the_last_two_checkpoints_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    for step in range(5):
        save_checkpoint(folder, {"step": step}, step)

    def killed(*_):  # the process dies between writing the temporary file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, {"step": 9}, 9)
    monkeypatch.undo()
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name]  # kdgraph's half-written file, recorded
    (folder / ".step-000000008.pt.tmp-1").write_bytes(b"mine")  # named like one, but not kdgraph's: it stays
    save_checkpoint(folder, {"step": 5}, 5)
    names = sorted(p.name for p in folder.iterdir())
    assert [n[:14] for n in names] == [".step-00000000", "latest.json", "step-000000004", "step-000000005"]
    assert json.loads((folder / "latest.json").read_text())["previous"] == names[2]


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match="latest.json is missing"):
        load_latest(folder)
    path = save_checkpoint(folder, {"v": torch.zeros(4)}, 1)
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=rf"no intact checkpoint .*{path.name} \(named by latest.json\) is dam"):
        load_latest(folder)
    (folder / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"latest.json is unreadable; {path.name} is damaged"):
        load_latest(folder)
