"""Multi-stage pipelines: per-stage edges, epochs, train overrides, frozen nodes, fits, init actions, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdgraph.spec import load_spec
from kdgraph.train import Interrupted, Trainer

from .conftest import load, node_state, records, same

pytestmark = pytest.mark.slow  # end-to-end runs: the slow tier (pytest -m slow)

# three stages, 4 batches per epoch, 2 epochs each: steps 1-8 teach, 9-16 warm, 17-24 distill
THREE = """\
kdgraph: 1
name: three
data: {dataset: synthetic, size: 64, test_size: 32, image_size: 8, classes: 4, batch_size: 16}
nodes:
  teacher: {net: cnn, width: 8}
  copy:    {net: cnn, width: 8, frozen: true}
  student: {net: cnn, width: 4}
  match:   {op: channel_match, in: [teacher.feat2, student.feat2]}
edges:
  - {name: teacher_ce, loss: ce, from: data.label, to: teacher.logits}
  - {name: student_ce, loss: ce, from: data.label, to: student.logits}
  - {name: kd, loss: kd, from: copy.logits, to: student.logits, weight: 0.5, T: 4}
  - {name: hint, loss: mse, from: match.out, to: student.feat2, weight: 10}
stages:
  - {name: teach, edges: [teacher_ce], epochs: 2, eval: [teacher.logits]}
  - {name: warm, edges: [student_ce], epochs: 2}
  - name: distill
    edges: [student_ce, kd, hint]
    epochs: 2
    fit: [match]
    frozen: [teacher]
    init: {student: {snapshot: warm}, copy: {stage: teach, node: teacher}}
    train: {optimizer: {lr: 0.02}}
    eval: [student.logits, copy.logits]
train:
  optimizer: {type: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}
  log_every: 2
  checkpoint_every: 3
  progress: false
deploy: student.logits
"""
STEPS_PER_STAGE = 8


def three_spec(folder: Path):
    path = folder / "three.yaml"
    path.write_text(THREE)
    return load_spec(path)






@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """One uninterrupted run of THREE: its folder, the weights it started from, its log."""
    folder = tmp_path_factory.mktemp("three")
    spec = three_spec(folder)
    probe = Trainer(spec, folder / "probe", log=lambda *_: None)
    probe._prepare()  # the run builds the same graph from the same seed
    initial = {k: v.clone() for k, v in probe.graph.state_dict().items()}
    log: list[str] = []
    Trainer(spec, folder / "run", log=log.append).run()
    return folder / "run", initial, log


def test_each_stage_trains_its_own_edges_for_its_own_epochs(straight) -> None:
    run, _, _ = straight
    rs = records(run)
    train = [r for r in rs if r["kind"] == "train"]
    for stage, edges in (
        ("teach", {"teacher_ce"}),
        ("warm", {"student_ce"}),
        ("distill", {"student_ce", "kd", "hint"}),
    ):
        mine = [r for r in train if r["stage"] == stage]
        assert mine and all(set(r["losses"]) == edges for r in mine), stage
        assert {r["epoch"] for r in mine} == {1, 2}  # epochs count from 1 in every stage
    assert [r["step"] for r in train if r["stage"] == "warm"][-1] == 2 * STEPS_PER_STAGE
    # stage train overrides: only the distill stage runs at lr 0.02; each stage has its own param groups
    assert {tuple(r["lr"].items()) for r in train if r["stage"] == "teach"} == {(("teacher", 0.1),)}
    assert {tuple(r["lr"].items()) for r in train if r["stage"] == "distill"} == {(("student", 0.02),)}
    evals = {(r["stage"], tuple(r["top1"])) for r in rs if r["kind"] == "eval"}
    assert evals == {
        ("teach", ("teacher.logits",)),
        ("warm", ("student.logits",)),
        ("distill", ("student.logits", "copy.logits")),
    }
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["stages"]) == ["teach", "warm", "distill"]
    assert summary["final"] == summary["stages"]["distill"]["final"]
    # the best of a stage is that stage's: warm's CE-only student does not count for distill
    warm_best = max(r["top1"]["student.logits"] for r in rs if r["kind"] == "eval" and r["stage"] == "warm")
    assert summary["stages"]["warm"]["best_top1"]["student.logits"] == warm_best
    distill_best = max(r["top1"]["student.logits"] for r in rs if r["kind"] == "eval" and r["stage"] == "distill")
    assert summary["best_top1"]["student.logits"] == distill_best


def test_frozen_nodes_stay_and_init_actions_copy_weights(straight) -> None:
    run, initial, log = straight
    ends = {name: load(run / "stage_ends" / f"{name}.pt") for name in ("teach", "warm", "distill")}
    final = load(run / "final.pt")
    teacher_trained = node_state(ends["teach"], "teacher")
    assert not same(teacher_trained, node_state(initial, "teacher"))  # stage 1 trained it
    # not trained after stage 1 (warm has no edge to it; distill freezes it): bitwise unchanged
    assert same(node_state(ends["warm"], "teacher"), teacher_trained)
    assert same(node_state(final, "teacher"), teacher_trained)
    # {stage: teach, node: teacher}: copy holds the teacher as it was at the end of stage teach
    assert same(node_state(final, "copy"), teacher_trained)
    # {snapshot: warm}: the snapshot is the student at the start of warm, its initial weights (theta0)
    snapshot = load(run / "snapshots" / "warm.pt")
    assert same(node_state(snapshot, "student"), node_state(initial, "student"))
    assert not same(node_state(ends["warm"], "student"), node_state(initial, "student"))
    assert "  init student: " + json.dumps({"snapshot": "warm"}) in log
    # the fit ran at the start of distill: each of the student's 16 channels took its own teacher channel (of 32)
    assert any(line.startswith("  fitted match on ") for line in log)
    perm = final["nodes.match.perm"].tolist()
    assert len(perm) == 16 and len(set(perm)) == 16 and all(0 <= p < 32 for p in perm)
    assert bool(final["nodes.match.fitted"])


def test_student_is_reset_to_theta0_when_distill_starts(tmp_path: Path) -> None:
    spec = three_spec(tmp_path)
    seen: dict[str, dict] = {}
    trainer = Trainer(spec, tmp_path / "run", log=lambda *_: None, stop_after=2 * STEPS_PER_STAGE + 1)

    def log(line: str) -> None:
        if line.startswith("  init student"):  # right after the init action of stage distill
            seen["student"] = {k: v.clone() for k, v in trainer.graph.nodes["student"].state_dict().items()}

    trainer.log = log
    with pytest.raises(Interrupted):
        trainer.run()
    snapshot = node_state(load(tmp_path / "run" / "snapshots" / "warm.pt"), "student")
    assert same(seen["student"], snapshot)


@pytest.mark.parametrize(
    "stop",
    [
        STEPS_PER_STAGE + 3,  # inside stage 2, mid-epoch
        2 * STEPS_PER_STAGE,  # the last step of stage 2: its last eval, stage 3's setup still to come
        2 * STEPS_PER_STAGE + 3,  # inside stage 3, after its init actions and fit
    ],
)
def test_resume_inside_any_stage_is_bitwise_equal(straight, tmp_path: Path, stop: int) -> None:
    run, _, _ = straight
    spec = three_spec(tmp_path)
    with pytest.raises(Interrupted):
        Trainer(spec, tmp_path / "resumed", log=lambda *_: None, stop_after=stop).run()
    assert not (tmp_path / "resumed" / "final.pt").exists()
    Trainer(spec, tmp_path / "resumed", log=lambda *_: None, resume=True).run()
    a, b = load(run / "final.pt"), load(tmp_path / "resumed" / "final.pt")
    assert same(a, b)

    def strip(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "peak_memory_mb")} for r in rs]

    assert strip(records(run)) == strip(records(tmp_path / "resumed"))
    for name in ("teach", "warm", "distill"):
        assert same(load(run / "stage_ends" / f"{name}.pt"), load(tmp_path / "resumed" / "stage_ends" / f"{name}.pt"))
    summary_a = json.loads((run / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary_a["stages"] == summary_b["stages"]


def test_a_fit_only_stage_with_no_epochs(tmp_path: Path) -> None:
    """KCD's middle step: no edges, no epochs, only a fit over the training set."""
    text = THREE.replace(
        "  - name: distill\n",
        "  - {name: match_channels, edges: [], epochs: 0, fit: [match]}\n  - name: distill\n",
    ).replace("    fit: [match]\n    frozen: [teacher]\n", "    frozen: [teacher]\n")
    path = tmp_path / "four.yaml"
    path.write_text(text)
    log: list[str] = []
    Trainer(load_spec(path), tmp_path / "run", log=log.append).run()
    fitted = [i for i, line in enumerate(log) if line.startswith("  fitted match")]
    reset = [i for i, line in enumerate(log) if line.startswith("  init student")]
    assert len(fitted) == 1 and len(reset) == 1 and fitted[0] < reset[0]  # fitted on the trained student
    stages = {r["stage"] for r in records(tmp_path / "run")}
    assert "match_channels" not in stages  # nothing trained, nothing evaluated
