"""The live console: a tqdm bar with images/s on a terminal, plain lines elsewhere, --quiet, nested runs."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from kdgraph.cli import main
from kdgraph.console import Console, plural

from .conftest import REPO

TINY = """\
kdgraph: 1
name: tiny
data: {dataset: digits, batch_size: 64, augment: false, subset: 640}
nodes:
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train: {epochs: 1, log_every: 2, optimizer: {type: sgd, lr: 0.05}}
deploy: student.logits
"""


def _run_in_pty(args: list[str], cwd: Path) -> str:
    """Run a command with stdin/stdout/stderr on a pseudo-terminal; everything it wrote."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=env)
    os.close(follower)
    out = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=120)
    os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_a_terminal_gets_a_progress_bar_with_images_per_second(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = _run_in_pty([sys.executable, "-m", "kdgraph", "run", "tiny.yaml"], tmp_path)
    frames = out.replace("\r\n", "\n").split("\r")
    bars = [f for f in frames if "tiny/main epoch 1/1:" in f and "|" in f]
    assert bars, out
    assert any(" images/s" in f and "%|" in f and "loss " in f for f in bars), bars[-3:]


def test_without_a_terminal_plain_lines_and_quiet_silences_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["run", "tiny.yaml", "--out", "a"]) == 0
    out = capsys.readouterr()
    assert "stage main: trains student for 1 epoch\n" in out.out and "%|" not in out.err
    assert main(["run", "tiny.yaml", "--out", "b", "--quiet"]) == 0
    quiet = capsys.readouterr().out.splitlines()
    assert quiet[0].startswith("run tiny -> ") and quiet[-1].startswith("done: ")
    assert [line for line in quiet if "top-1" in line] == [line for line in quiet if line.startswith("student")]


def test_plain_progress_line_names_epoch_loss_rate_and_eta() -> None:
    lines: list[str] = []
    bar = Console(lines.append, bars=False, interval=0.0).nested("teacher").epoch_bar("t/main", 2, 5, 1000)
    bar.update(250)
    bar.show(loss=0.5, images_per_s=125.0)
    # 750 images left at 125 images/s: 6 s
    assert lines == ["  [teacher] t/main epoch 2/5: 250/1000 images, loss 0.5000, 125 images/s, ETA 0:06"]


def test_quiet_console_says_nothing_and_plural() -> None:
    lines: list[str] = []
    console = Console(lines.append, quiet=True, interval=0.0)
    console("hello")
    console.epoch_bar("x", 1, 1, 10).show(1.0, 1.0)
    assert lines == [] and plural(1, "epoch") == "1 epoch" and plural(3, "epoch") == "3 epochs"
