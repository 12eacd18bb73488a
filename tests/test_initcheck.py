"""validate (and run, before anything trains) check every init against the node it fills."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdgraph.cli import main
from kdgraph.nets.small import SmallCNN

from .conftest import GRAPHS

TWO_STAGES = """\
kdgraph: 1
name: two
data: {dataset: digits, batch_size: 32, subset: 64}
nodes:
  a: {net: cnn, width: 4}
  b: {net: cnn, width: WIDTH}
edges:
  - {name: ca, loss: ce, from: data.label, to: a.logits}
  - {name: cb, loss: ce, from: data.label, to: b.logits}
stages:
  - {name: first, edges: [ca], epochs: 1}
  - {name: second, edges: [cb], epochs: 1, init: {b: {stage: first, node: a}}}
deploy: b.logits
"""


def test_a_dependency_that_does_not_fit_is_one_line_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(GRAPHS / "quickstart.yaml"), "nodes.teacher.width=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    line_no = next(i for i, t in enumerate((GRAPHS / "quickstart.yaml").read_text().splitlines(), 1) if "init:" in t)
    assert line.startswith(f"{GRAPHS / 'quickstart.yaml'}:{line_no}: nodes.teacher.init.from: init from:")
    assert "teachers/digits_cnn.yaml" in line and "shape-mismatched" in line
    assert "stages.0.0.weight (32, 1, 3, 3) there vs (16, 1, 3, 3) here" in line  # width 32 there, 16 here
    cache = tmp_path / "cache"
    assert not [p for p in cache.glob("*") if p.name != "meta"]  # no teacher was trained or started


def test_run_stops_before_making_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(GRAPHS / "quickstart.yaml"), "nodes.teacher.width=16", "--out", "r"]) == 2
    assert "shape-mismatched" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_stage_init_between_different_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ok.yaml").write_text(TWO_STAGES.replace("WIDTH", "4"))
    (tmp_path / "bad.yaml").write_text(TWO_STAGES.replace("WIDTH", "8"))
    assert main(["validate", "ok.yaml"]) == 0
    assert main(["validate", "bad.yaml"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "bad.yaml:12: stages[1].init.b.stage: init stage: node 'a' of stage first does not fit node 'b'" in line


def test_checkpoint_init_is_loaded_by_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"model": SmallCNN(width=4).state_dict()}, tmp_path / "w4.pt")
    graph = TWO_STAGES.replace("WIDTH", "8").replace("  b: {net: cnn, width: 8}",
                                                       "  b: {net: cnn, width: 8, init: {checkpoint: w4.pt}}")
    (tmp_path / "ck.yaml").write_text(graph.replace(", init: {b: {stage: first, node: a}}", ""))
    assert main(["validate", "ck.yaml"]) == 2
    err = capsys.readouterr().err  # the same report as the run's: the file, then the keys that differ
    assert err.startswith("ck.yaml:6: nodes.b.init.checkpoint: checkpoint ") and "w4.pt [model] does not fit" in err
    assert "stages.0.0.weight (4, 1, 3, 3) in file vs (8, 1, 3, 3) in model" in err
