"""Interrupted runs resume to exactly the result of an uninterrupted one.

Two real `kdgraph run` processes are started side by side on a two-stage graph with dropout (so the
RNG state matters) and a checkpoint every 5 steps: one is killed with SIGKILL at a random step, the
other gets SIGTERM once the second stage has begun. Both are resumed with `kdgraph run --resume`
and must end bitwise equal to a run that was never interrupted: weights, optimizer state, RNG
state, position and every metrics record except the wall-clock ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdgraph.checkpoint import load_latest

pytestmark = pytest.mark.slow  # end-to-end runs: the slow tier (pytest -m slow)

REPO = Path(__file__).resolve().parent.parent
GRAPH = """\
kdgraph: 1
name: resumable
data: {dataset: synthetic, size: 128, test_size: 32, image_size: 8, channels: 1, classes: 4, batch_size: 8}
nodes:
  teacher: {net: mlp, hidden: [64, 64], dropout: 0.3}
  student: {net: mlp, hidden: [32], dropout: 0.3}
edges:
  - {name: teacher_ce, loss: ce, from: data.label, to: teacher.logits}
  - {name: student_ce, loss: ce, from: data.label, to: student.logits, weight: 0.5}
  - {name: student_kd, loss: kd, from: teacher.logits, to: student.logits, weight: 0.5, T: 4}
stages:
  - {name: teacher, edges: [teacher_ce], epochs: 3}
  - {name: student, edges: [student_ce, student_kd], epochs: 3, frozen: [teacher]}
train:
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  lr_schedule: {type: cosine}
  checkpoint_every: 5
  log_every: 1
  progress: false
deploy: student.logits
"""
STEPS = 2 * 3 * (128 // 8)  # two stages of three epochs of 16 batches
WALL_CLOCK = ("images_per_s", "peak_memory_mb")


def cli(*argv: str) -> int:
    """`kdgraph ...` in this process (stdout and stderr swallowed)."""
    from kdgraph.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(list(argv))


def train_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written right now
            records.append(json.loads(line))
    return [r for r in records if r.get("kind") == "train"]


class Victim:
    """A `kdgraph run` subprocess and a thread that sends `sig` once `ready(train records)` holds."""

    def __init__(self, graph: Path, run_dir: Path, sig: int, ready):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KDGRAPH_CPU": "1",
            "OMP_NUM_THREADS": "1",  # the same kernels as this process (see one_thread)
        }
        argv = [sys.executable, "-m", "kdgraph", "run", str(graph), "--out", str(run_dir)]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.run_dir, self.sig, self.ready = run_dir, sig, ready
        self.killed_alive = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            if self.ready(train_records(self.run_dir)):
                self.killed_alive = self.proc.poll() is None
                self.proc.send_signal(self.sig)
                return
            time.sleep(0.002)

    def finish(self, timeout: float = 240) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        self.thread.join(timeout=5)
        return self.proc.returncode, err


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(run: Path, reference: Path) -> None:
    def records(d: Path) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]

    assert records(run) == records(reference)
    final, ref_final = (torch.load(d / "final.pt", weights_only=True) for d in (run, reference))
    assert same(final["graph"], ref_final["graph"])
    last, ref_last = load_latest(run / "checkpoints"), load_latest(reference / "checkpoints")
    for key in ("graph", "optimizer", "rng", "position", "accumulators", "best", "last_eval"):
        assert same(last[key], ref_last[key]), key
    assert last["position"]["step"] == STEPS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not stall on a busy machine); results need one count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference run and the two interrupted ones (run side by side)."""
    folder = tmp_path_factory.mktemp("interrupt")
    graph = folder / "resumable.yaml"
    graph.write_text(GRAPH)
    seed = os.environ.get("KDGRAPH_KILL_SEED")
    kill_at = random.Random(seed).randint(1, STEPS - 8)
    killed = Victim(graph, folder / "killed", signal.SIGKILL, lambda rows: len(rows) >= kill_at)
    termed = Victim(graph, folder / "termed", signal.SIGTERM, lambda rows: any(r["stage"] == "student" for r in rows))
    assert cli("run", str(graph), "--out", str(folder / "reference")) == 0
    return {
        "reference": folder / "reference",
        "kill_at": kill_at,
        "killed": (killed, *killed.finish()),
        "termed": (termed, *termed.finish()),
    }


def test_kill_9_at_a_random_step_then_resume_is_bitwise_equal(runs: dict[str, Any]) -> None:
    victim, code, err = runs["killed"]
    where = f"killed after step {runs['kill_at']} (set KDGRAPH_KILL_SEED to replay)"
    assert victim.killed_alive and code == -signal.SIGKILL, f"{where}: exit {code}\n{err}"
    assert not (victim.run_dir / "final.pt").exists()
    assert cli("run", "--resume", str(victim.run_dir)) == 0, where
    assert_same_run(victim.run_dir, runs["reference"])


def test_sigterm_checkpoints_exits_143_and_resumes_in_the_second_stage(runs: dict[str, Any]) -> None:
    victim, code, err = runs["termed"]
    assert victim.killed_alive and code == 128 + signal.SIGTERM, err
    assert "interrupted at step" in err and "Traceback" not in err
    state = load_latest(victim.run_dir / "checkpoints")
    stopped = state["position"]
    assert stopped["stage"] == 1 and 0 < stopped["step"] < STEPS  # inside the second stage
    # the checkpoint is of the step it stopped at: nothing was computed after it
    assert train_records(victim.run_dir)[-1]["step"] == stopped["step"]
    assert cli("run", "--resume", str(victim.run_dir)) == 0
    assert_same_run(victim.run_dir, runs["reference"])


def test_resume_of_a_run_without_checkpoint_starts_it_over(tmp_path: Path, runs: dict[str, Any]) -> None:
    """Killed before its first checkpoint: --resume starts from the beginning, same result."""
    import shutil

    run_dir = tmp_path / "early"
    shutil.copytree(runs["reference"], run_dir)
    for name in ("checkpoints", "final.pt", "summary.json"):
        target = run_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "stage": "teach')  # a torn line
    assert cli("run", "--resume", str(run_dir)) == 0
    assert_same_run(run_dir, runs["reference"])
