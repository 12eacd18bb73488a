"""Deploy and export: the slice that feeds the deploy port, as one standalone module that reproduces the run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from kdgraph.cli import main
from kdgraph.errors import CheckpointError, RunError, SpecError
from kdgraph.export import (
    Pruned,
    StandaloneCall,
    deploy_slice,
    deployed_parameter_count,
    evaluate_exported,
    export_run,
    load_exported,
)
from kdgraph.graph import DataInfo, DistillGraph
from kdgraph.spec import load_spec
from kdgraph.train import Interrupted, Trainer

# SimKD's shape in miniature: the deployed model is student + projector + the teacher's classifier
SIMKD = """\
kdgraph: 1
name: tiny_simkd
data: {dataset: synthetic, size: 96, test_size: 40, image_size: 8, classes: 4, batch_size: 16, eval_batch_size: 16}
nodes:
  teacher: {net: resnet14, frozen: true}
  student: {net: resnet8}
  proj:    {op: projector, in: student.feat3, channels: 64}
  pool:    {op: pool, in: proj.out}
  head:    {op: call, in: pool.out, node: teacher, module: fc}
edges:
  - {loss: mse, from: teacher.feat3, to: proj.out}
  - {loss: ce, from: data.label, to: head.out, weight: 0.1}
train:
  epochs: 2
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}
  eval: [head.out, student.logits]
  progress: false
deploy: head.out
"""

# digits, the real data of the quickstart: a teacher and student trained together, the student deployed
DIGITS = """\
kdgraph: 1
name: tiny_digits
data: {dataset: digits, batch_size: 32, augment: false}
nodes:
  teacher: {net: cnn, width: 8}
  student: {net: cnn, width: 4}
edges:
  - {loss: ce, from: data.label, to: teacher.logits}
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
train:
  epochs: 2
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  eval: [student.logits, teacher.logits]
  progress: false
deploy: student.logits
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def info_of(spec) -> DataInfo:
    from kdgraph.data import data_info_of

    return DataInfo(*data_info_of(spec.data))


@pytest.fixture(scope="module")
def simkd_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("simkd")
    spec = load_spec(write(folder, "tiny_simkd", SIMKD))
    Trainer(spec, folder / "run", log=lambda *_: None).run()
    return folder / "run"


def test_the_slice_holds_the_teachers_classifier_not_the_teacher(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "tiny_simkd", SIMKD))
    graph = DistillGraph(spec, info_of(spec))
    order, outside = deploy_slice(spec, "head.out")
    assert order == ["student", "proj", "pool", "head"] and outside == {"head": "teacher"}
    # the planner still knows the call uses the teacher (built first, listed in the slice) ...
    assert "teacher" in graph.plan.deploy_nodes
    # ... but evaluating the deploy port does not run it, and only its classifier is counted; the student's
    # own classifier is never used on the way to head.out: no part of the deployed model either
    assert "teacher" not in [s.name for s in graph.plan.stages[0].eval_program]
    teacher_fc = sum(p.numel() for p in graph.nodes["teacher"].fc.parameters())
    student_fc = sum(p.numel() for p in graph.nodes["student"].fc.parameters())
    expected = graph.facts["student"].params - student_fc + graph.facts["proj"].params + teacher_fc
    assert deployed_parameter_count(graph) == expected


def test_plan_prints_what_the_export_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(write(tmp_path, "tiny_simkd", SIMKD))]) == 0
    out = capsys.readouterr().out
    spec = load_spec(tmp_path / "tiny_simkd.yaml")
    count = deployed_parameter_count(DistillGraph(spec, info_of(spec)))
    parts = "student (without fc), proj, pool, head (teacher.fc)"
    assert f"deploy head.out: nodes {parts}; {count:,} deployed parameters" in out


def test_export_reloads_to_the_same_outputs_without_the_teacher(simkd_run: Path, tmp_path: Path) -> None:
    report = export_run(simkd_run, tmp_path / "model.pt")
    model = load_exported(tmp_path / "model.pt")
    assert not model.training and model.port == "head.out"
    assert set(model.graph.nodes) == {"student", "proj", "pool", "head"}
    assert isinstance(model.graph.nodes["head"], StandaloneCall)
    assert isinstance(model.graph.nodes["student"].fc, Pruned)
    record = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(".teacher." in k for k in record["state_dict"])  # no teacher weights shipped
    assert record["pruned"] == {"student": ["fc"]}
    assert not any(k.startswith("graph.nodes.student.fc.") for k in record["state_dict"])
    assert "teacher" not in record["spec"]["nodes"] or record["outside"] == {"head": "teacher"}
    assert record["registry"]["head"] == "op call" and record["registry"]["student"] == "net resnet8"
    final = torch.load(simkd_run / "final.pt", weights_only=True)
    spec = load_spec(document=final["spec"])
    graph = DistillGraph(spec, DataInfo(**final["data_info"]))
    graph.load_state_dict(final["graph"])
    graph.eval()
    image = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = graph.outputs(image, ["head.out"])["head.out"]
    with torch.no_grad():
        assert torch.equal(model(image), expected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates jit in favour of torch.export
            traced = torch.jit.load(report["torchscript"])  # the .ts beside the .pt, no kdgraph needed
        assert torch.allclose(traced(image), expected, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) == deployed_parameter_count(graph) == report["parameters"]


def test_exported_top1_equals_the_runs_final_evaluation(simkd_run: Path, tmp_path: Path) -> None:
    export_run(simkd_run, tmp_path / "model.pt", torchscript=False)
    summary = json.loads((simkd_run / "summary.json").read_text())
    got = evaluate_exported(load_exported(tmp_path / "model.pt"), simkd_run)
    assert got["top1"] == summary["final"]["top1"]["head.out"]
    assert got["top5"] == summary["final"]["top5"]["head.out"]


@pytest.mark.slow
def test_digits_run_export_check_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec(write(tmp_path, "tiny_digits", DIGITS))
    summary = Trainer(spec, tmp_path / "run", log=lambda *_: None).run()
    assert summary["final"]["top1"]["student.logits"] > 50.0  # a real, trained model
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "student.pt"), "--check"]) == 0
    out = capsys.readouterr().out
    top1 = summary["final"]["top1"]["student.logits"]
    assert f"check: top-1 {top1:.2f}% on the test split, as the run's final evaluation" in out
    assert (tmp_path / "student.ts").exists()
    # another port of the same run, the normalisation travels with the model
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "t.pt"), "--port", "teacher.logits"]) == 0
    teacher = load_exported(tmp_path / "t.pt")
    assert evaluate_exported(teacher, tmp_path / "run")["top1"] == summary["final"]["top1"]["teacher.logits"]
    assert set(teacher.normalize) == {"mean", "std"} and len(teacher.normalize["mean"]) == 1


def test_the_exported_module_trains_like_any_module(simkd_run: Path, tmp_path: Path) -> None:
    export_run(simkd_run, tmp_path / "model.pt", torchscript=False)
    model = load_exported(tmp_path / "model.pt").train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training for m in bns)  # no stage rules: BN in train mode when asked
    out = model(torch.randn(4, 3, 8, 8))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_export_refuses_unfinished_runs_and_unknown_ports(tmp_path: Path, simkd_run: Path) -> None:
    spec = load_spec(write(tmp_path, "tiny_simkd", SIMKD))
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "half", log=lambda *_: None, stop_after=3).run()
    with pytest.raises(RunError, match="unfinished run"):
        export_run(tmp_path / "half", tmp_path / "x.pt")
    with pytest.raises(SpecError, match="no node 'nope'"):
        export_run(simkd_run, tmp_path / "x.pt", port="nope.out")
    assert main(["export", str(tmp_path / "half")]) == 2
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(CheckpointError):
        load_exported(tmp_path / "junk.pt")
