"""Small surprises of a newcomer's first hour: did-you-mean by case, no quiet downloads, data.root, plots."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdgraph.errors import SpecError, did_you_mean
from kdgraph.spec import load_spec

from .conftest import GRAPHS, REPO


def test_did_you_mean_ignores_case() -> None:
    assert did_you_mean("ResNet8", ["resnet8", "resnet8x4", "ResNet18"]).startswith("did you mean 'resnet8'")
    assert did_you_mean("resnet18", ["resnet8", "ResNet18"]).startswith("did you mean 'ResNet18'")
    with pytest.raises(SpecError, match="unknown net 'ResNet8x4' \\(did you mean 'resnet8x4'"):
        load_spec(GRAPHS / "kd.yaml", ["nodes.student.net=ResNet8x4"])


def test_missing_cifar_is_an_immediate_error_without_download(tmp_path: Path) -> None:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kdgraph", "run", str(GRAPHS / "baseline.yaml"), "data.root=nowhere"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                           "KDGRAPH_CACHE": str(tmp_path / "c")},
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    # the override's relative path is taken from where it was typed, not from the graph file's folder
    assert f"cifar100 not found under {tmp_path / 'nowhere' / 'cifar-100-python'}" in line
    assert "data.download: true" in line and time.perf_counter() - t < 60  # no network attempt


def test_data_root_in_a_file_is_relative_to_the_file(tmp_path: Path) -> None:
    spec = load_spec(GRAPHS / "baseline.yaml", ["++data.root=here"])
    assert spec.data["root"] == str(Path.cwd() / "here")
    assert spec.data["download"] is False


def test_accuracy_axes_end_at_100(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from kdgraph.plot import load_runs, make_figure

    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"name": "r", "source": "r.yaml", "overrides": []}))
    records = [{"kind": "train", "stage": "a", "epoch": 1, "step": 1, "loss": 1.0, "losses": {"x": 1.0},
                "lr": {"s": 0.1}},
               {"kind": "eval", "stage": "a", "epoch": 1, "step": 1, "top1": {"s.logits": 99.5}},
               {"kind": "eval", "stage": "a", "epoch": 2, "step": 2, "top1": {"s.logits": 100.0}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = make_figure(load_runs([run]))
    (ax,) = [a for a in fig.axes if a.get_title() == "top-1 s.logits (%)"]
    assert ax.get_ylim()[1] == 100.0


LOGITS_AS_LABELS = """\
kdgraph: 1
name: e
data: {dataset: digits, batch_size: 32, augment: false}
vars: {T: 4}
nodes:
  teacher: {net: cnn, width: 8, frozen: true}
  student: {net: cnn, width: 4}
edges:
  - {loss: LOSS, from: teacher.logits, to: student.logits, T: "${T}"}
deploy: student.logits
"""


def test_dry_run_errors_name_the_key_at_fault(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kdgraph.cli import main

    (tmp_path / "ce.yaml").write_text(LOGITS_AS_LABELS.replace("LOSS", "ce").replace(', T: "${T}"', ""))
    assert main(["validate", "ce.yaml"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ce.yaml:9: edges[0].from: ") and "takes class labels (N,)" in line
    assert "teacher.logits is (N, 10)" in line and "from: data.label" in line
    (tmp_path / "kd.yaml").write_text(LOGITS_AS_LABELS.replace("LOSS", "kd"))
    assert main(["validate", "kd.yaml", "vars.T=four"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kd.yaml:9: edges[0].T: ") and "T = 'four' (from vars.T) is not a number" in line
