"""Dependency graphs: `init: {from: GRAPH.yaml, overrides: [...]}` trains the dependency with exactly those
overrides (printed, cached by its resolved spec); an unknown key there is one clean error at its YAML line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdgraph.check import check_graph
from kdgraph.cli import main
from kdgraph.errors import SpecError
from kdgraph.train import Trainer

from .conftest import records

TEACHER = """\
kdgraph: 1
name: dep_teacher
data: {dataset: synthetic, size: 64, test_size: 16, image_size: 8, classes: 4, batch_size: 16}
nodes:
  teacher: {net: mlp, hidden: [16]}
edges:
  - {loss: ce, from: data.label, to: teacher.logits}
train: {epochs: 1, progress: false, optimizer: {type: sgd, lr: 0.1}}
deploy: teacher.logits
"""

STUDENT = """\
kdgraph: 1
name: dep_student
data: {dataset: synthetic, size: 64, test_size: 16, image_size: 8, classes: 4, batch_size: 16}
nodes:
  teacher: {net: mlp, hidden: [16], frozen: true,
            init: {from: teacher.yaml, overrides: [train.epochs=3, "train.optimizer.lr=0.05"]}}
  student: {net: mlp, hidden: [8]}
edges:
  - {loss: kd, from: teacher.logits, to: student.logits}
train: {epochs: 1, progress: false}
deploy: student.logits
"""


def write(tmp_path: Path, student: str = STUDENT) -> Path:
    (tmp_path / "teacher.yaml").write_text(TEACHER)
    (tmp_path / "student.yaml").write_text(student)
    return tmp_path / "student.yaml"


def cached_runs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "cache").glob("dep_teacher-*/final.pt"))


@pytest.mark.slow
def test_dependency_trains_with_its_overrides_and_says_so(tmp_path: Path) -> None:
    spec, _ = check_graph(write(tmp_path), ["++data.size=48"], dry=False)
    lines: list[str] = []
    Trainer(spec, tmp_path / "run", log=lines.append).run()
    (teacher_run,) = cached_runs(tmp_path)
    epochs = {r["epoch"] for r in records(teacher_run) if r["kind"] == "train"}
    assert epochs == {1, 2, 3}  # train.epochs=3 of the init's overrides, not the file's 1
    assert {r["lr"]["teacher"] for r in records(teacher_run) if r["kind"] == "train"} == {0.05}
    resolved = json.loads((teacher_run / "run.json").read_text())
    assert resolved["overrides"] == ["++data.size=48", "train.epochs=3", "train.optimizer.lr=0.05"]
    said = next(line for line in lines if "first" in line)
    assert said.strip().startswith(
        "training teacher.yaml with ++data.size=48 (command line), train.epochs=3 (init.overrides), "
        "train.optimizer.lr=0.05 (init.overrides) first"
    )
    # the same dependency again is reused; a different override is a different cache entry
    Trainer(spec, tmp_path / "run2", log=lines.append).run()
    assert any(line.strip().startswith("reusing teacher.yaml with") for line in lines)
    spec3, _ = check_graph(write(tmp_path, STUDENT.replace("train.epochs=3", "train.epochs=2")), dry=False)
    Trainer(spec3, tmp_path / "run3", log=lines.append).run()
    assert len(cached_runs(tmp_path)) == 2


@pytest.mark.slow
def test_not_forwarded_command_line_overrides_stay_with_the_parent(tmp_path: Path) -> None:
    spec, _ = check_graph(write(tmp_path), ["train.epochs=2"], dry=False)
    Trainer(spec, tmp_path / "run", log=lambda *_: None).run()
    (teacher_run,) = cached_runs(tmp_path)
    assert json.loads((teacher_run / "run.json").read_text())["overrides"] == [
        "train.epochs=3",
        "train.optimizer.lr=0.05",
    ]
    teacher = torch.load(teacher_run / "final.pt", weights_only=True)["graph"]
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["graph"]
    assert torch.equal(teacher["nodes.teacher.fc.weight"], final["nodes.teacher.fc.weight"])


def test_unknown_key_in_dependency_overrides_is_reported_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, STUDENT.replace("train.epochs=3", "train.epoch=3"))
    with pytest.raises(SpecError) as e:
        check_graph(path, dry=False)
    (problem,) = e.value.problems
    assert (problem.file, problem.line, problem.path) == (str(path), 6, "nodes.teacher.init.overrides[0]")
    assert "no such key in teacher.yaml" in problem.message and "did you mean 'epochs'?" in (problem.hint or "")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: nodes.teacher.init.overrides[0]" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # nothing trained


def test_a_cycle_of_graph_files_is_an_error(tmp_path: Path) -> None:
    def pointing_at(name: str, other: str) -> str:
        net = "{net: mlp, hidden: [16]}"
        return TEACHER.replace("dep_teacher", name).replace(net, net[:-1] + f", init: {{from: {other}}}}}")

    (tmp_path / "a.yaml").write_text(pointing_at("a", "b.yaml"))
    (tmp_path / "b.yaml").write_text(pointing_at("b", "a.yaml"))
    with pytest.raises(SpecError, match="init from cycle: a.yaml -> b.yaml -> a.yaml"):
        check_graph(tmp_path / "a.yaml", dry=False)
