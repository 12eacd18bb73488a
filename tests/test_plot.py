"""Run plots: curves read from metrics.jsonl, one panel per loss edge, lr and evaluated port, runs overlaid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdgraph.cli import main
from kdgraph.plot import epoch_axis, load_runs, make_figure, panels, plot_runs, run_curves
from kdgraph.spec import load_spec
from kdgraph.train import Trainer

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"

# two stages, epochs restarting at 1 in the second, steps counting on (as train.py writes them)
RECORDS = [
    {"kind": "train", "stage": "a", "epoch": 1, "step": 2, "loss": 4.0, "losses": {"x": 4.0}, "lr": {"t": 0.1}},
    {"kind": "train", "stage": "a", "epoch": 1, "step": 4, "loss": 3.0, "losses": {"x": 3.0}, "lr": {"t": 0.1}},
    {"kind": "eval", "stage": "a", "epoch": 1, "step": 4, "top1": {"t.logits": 20.0}},
    {"kind": "train", "stage": "a", "epoch": 2, "step": 8, "loss": 2.0, "losses": {"x": 2.0}, "lr": {"t": 0.01}},
    {"kind": "eval", "stage": "a", "epoch": 2, "step": 8, "top1": {"t.logits": 40.0}},
    {"kind": "train", "stage": "b", "epoch": 1, "step": 9, "loss": 1.5, "losses": {"y": 1.5}, "lr": {"s": 0.1}},
    {"kind": "train", "stage": "b", "epoch": 1, "step": 12, "loss": 1.0, "losses": {"y": 1.0}, "lr": {"s": 0.1}},
    {"kind": "eval", "stage": "b", "epoch": 1, "step": 12, "top1": {"t.logits": 40.0, "s.logits": 30.0}},
]

TINY = """\
kdgraph: 1
name: tiny_kd
data: {dataset: synthetic, size: 8, test_size: 8, batch_size: 4, image_size: 8, classes: 4, augment: false}
nodes:
  teacher: {net: cnn, width: 4, frozen: true}
  student: {net: cnn, width: 2}
edges:
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
train:
  epochs: 2
  optimizer: {type: sgd, lr: 0.05}
  log_every: 1
  eval: [student.logits]
  progress: false
deploy: student.logits
"""


def fake_run(root: Path, name: str, records: list[dict]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": "fake", "source": "fake.yaml", "overrides": []}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_epoch_axis_spans_stages() -> None:
    # stage a: epoch 1 ends at step 4, epoch 2 at step 8; stage b continues from epoch 2
    assert epoch_axis(RECORDS) == [0.5, 1.0, 1.0, 2.0, 2.0, 2.0 + 1 / 4, 3.0, 3.0]


def test_run_curves_by_step_and_stage_marks() -> None:
    c = run_curves(RECORDS, "r", "step")
    assert c.losses["x"].x == [2, 4, 8] and c.losses["x"].y == [4.0, 3.0, 2.0]
    assert c.losses["y"].x == [9, 12]
    assert c.lr == {"t": c.lr["t"], "s": c.lr["s"]} and c.lr["t"].y == [0.1, 0.1, 0.01]
    assert c.top1["t.logits"].y == [20.0, 40.0, 40.0] and c.top1["s.logits"].x == [12]
    assert c.total.y == [4.0, 3.0, 2.0, 1.5, 1.0]
    assert c.stage_starts == [(8.0, "b")]  # stage a's last step
    assert run_curves(RECORDS, "r", "epoch").stage_starts == [(2.0, "b")]


def test_figure_has_a_panel_per_curve_and_a_line_per_run(tmp_path: Path) -> None:
    one = fake_run(tmp_path, "one", RECORDS)
    two = fake_run(tmp_path, "two", RECORDS[:5])  # stopped after stage a
    runs = load_runs([one, two])
    assert [r.label for r in runs] == ["fake/one", "fake/two"]
    titles = [t for t, _, _ in panels(runs)]
    assert titles[:4] == ["total loss (weighted)", "loss x", "loss y", "learning rate"]
    assert titles[4:] == ["top-1 t.logits (%)", "top-1 s.logits (%)"]
    fig = make_figure(runs)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == set(titles)

    def curves(title: str) -> list:
        return [line for line in axes[title].get_lines() if not line.get_gid().startswith("stage:")]

    assert [line.get_gid() for line in curves("loss x")] == ["fake/one", "fake/two"]
    assert [line.get_gid() for line in curves("loss y")] == ["fake/one"]  # only run one reached stage b
    assert len(curves("learning rate")) == 3  # groups t and s of run one, t of run two
    assert list(curves("top-1 t.logits (%)")[0].get_ydata()) == [20.0, 40.0, 40.0]
    stage_marks = [line for line in axes["loss x"].get_lines() if line.get_gid() == "stage:b"]
    assert len(stage_marks) == 1 and list(stage_marks[0].get_xdata()) == [8.0, 8.0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fake/one", "fake/two"]


@pytest.mark.slow
def test_plot_real_runs_overlaid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = tmp_path / "tiny.yaml"
    graph.write_text(TINY)
    runs = []
    for lr in (0.05, 0.2):
        run = tmp_path / f"lr{lr}"
        Trainer(load_spec(graph, [f"train.optimizer.lr={lr}"]), run, log=lambda *_: None).run()
        runs.append(run)
    out = tmp_path / "curves.png"
    assert main(["plot", *map(str, runs), "-o", str(out), "--x", "epoch", "--label", "slow", "--label", "fast"]) == 0
    assert out.read_bytes()[:8] == PNG
    assert "wrote" in capsys.readouterr().out
    curves = load_runs(runs, ["slow", "fast"], "epoch")
    assert set(curves[0].losses) == {"ce:data->student", "kd:teacher->student"}
    assert curves[0].top1["student.logits"].x == [1.0, 2.0]
    assert curves[0].lr["student"].y[0] == pytest.approx(0.05) and curves[1].lr["student"].y[0] == pytest.approx(0.2)
    assert plot_runs(runs, tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")


def test_plot_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    run = fake_run(tmp_path, "one", RECORDS)
    assert main(["plot", str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main(["plot", str(run), "-o", str(tmp_path / "x.docx")]) == 2
    assert "use .png, .svg or .pdf" in capsys.readouterr().err
    assert main(["plot", str(run), "-o", str(tmp_path / "x.png"), "--label", "a", "--label", "b"]) == 2
    assert "give one per run" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["plot", str(run), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kdgraph plot needs matplotlib: pip install 'kdgraph[plot]'"
