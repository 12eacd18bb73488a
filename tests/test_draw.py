"""Diagrams: every graph file drawn as DOT and Mermaid without training or loading anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest

from kdgraph import draw
from kdgraph.cli import main
from kdgraph.draw import (
    Diagram,
    build_diagram,
    diagram_of,
    fmt_schedule,
    load_for_drawing,
    plan_for_drawing,
    render,
    run_results,
    to_dot,
    to_mermaid,
)
from kdgraph.train import Trainer

from .conftest import GRAPHS, REPO

ALL_GRAPHS = sorted(p for p in GRAPHS.rglob("*.yaml") if "presets" not in p.relative_to(GRAPHS).parts)
CHECK_MERMAID = REPO / "scripts" / "check_mermaid.mjs"

# DESIGN.md §1 (SLKD) with the teacher's init removed
SLKD = """\
kdgraph: 1
name: slkd
title: SLKD — self-learning teachers with ρ-mix fusion
cite: Liu, Li, Cheng. Improving Knowledge Distillation via Transferring Learning Ability. arXiv:2304.11923
vars: {alpha: 0.1, lam: 1.0, eta: 3.0, T: 4, rho: 0.5}
data: {dataset: cifar100, batch_size: 64}
nodes:
  teacher: {net: resnet32x4, frozen: true}
  slt1:    {net: resnet32x4}
  slt2:    {net: resnet32x4}
  student: {net: resnet8x4}
  slt:     {op: mix, in: [slt1.logits, slt2.logits], weights: ["${rho}", "${1 - rho}"]}
edges:
  - {loss: ce, from: data.label,     to: student.logits, weight: "${alpha * (lam + eta)}"}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: "${(1 - alpha) * lam}", T: "${T}"}
  - {loss: kd, from: slt.out,        to: student.logits, weight: "${(1 - alpha) * eta}", T: "${T}"}
  - {loss: ce, from: data.label,     to: slt1.logits,    weight: "${alpha}"}
  - {loss: kd, from: teacher.logits, to: slt1.logits,    weight: "${1 - alpha}", T: "${T}"}
  - {loss: ce, from: data.label,     to: slt2.logits,    weight: "${alpha}"}
  - {loss: kd, from: teacher.logits, to: slt2.logits,    weight: "${1 - alpha}", T: "${T}"}
train:
  epochs: 240
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  lr_schedule: {type: step, milestones: [150, 180, 210], gamma: 0.1}
deploy: student.logits
"""

# every kind of element: stages, a missing checkpoint, a learned temperature through a gradient
# reversal, a connector, a fitted op, a loss with detach: false, a `call` of the teacher's
# classifier, schedules, a custom edge name, and a node called `end` (a Mermaid keyword)
RICH = """\
kdgraph: 1
name: rich
title: 'Rich: "quoted" <b> #1 | x'
data: {dataset: synthetic, batch_size: 8, classes: 10}
nodes:
  teacher: {net: cnn, width: 16, frozen: true, init: {checkpoint: missing/teacher.pth, key: model}}
  end:     {net: cnn, width: 8}
  conn:    {op: connector, in: [end.feat1, teacher.feat1]}
  temp:    {op: temperature}
  tgrl:    {op: grl, in: [temp.out], factor: {cosine: [0, -1], epochs: 10}}
  match:   {op: channel_match, in: [teacher.feat2, end.feat2]}
  pooled:  {op: pool, in: [conn.out]}
  head:    {op: call, in: [pooled.out], node: teacher, module: fc}
edges:
  - {loss: ce, from: data.label, to: end.logits, weight: 0.5}
  - {loss: kd, from: teacher.logits, to: end.logits, weight: {value: 8, warmup: 20}, T: tgrl.out}
  - {loss: mse, from: teacher.feat1, to: conn.out, weight: {value: 0.9, until: 60}}
  - {loss: mse, name: matched, from: match.out, to: end.feat2, detach: false}
  - {loss: ce, from: data.label, to: head.out}
stages:
  - {name: warm, edges: ["ce:data->end", "kd:teacher->end", "mse:teacher->conn", "ce:data->head"], epochs: 2}
  - {name: match, edges: [matched], fit: [match], frozen: [conn], epochs: 1, init: {end: {stage: warm}}}
deploy: head.out
"""

TWO_STAGES = """\
kdgraph: 1
name: two_stage
data: {dataset: synthetic, size: 8, test_size: 8, batch_size: 4, image_size: 8, classes: 4, augment: false}
nodes:
  teacher: {net: cnn, width: 4}
  student: {net: cnn, width: 2}
edges:
  - {loss: ce, from: data.label, to: teacher.logits}
  - {loss: ce, from: data.label, to: student.logits, weight: 0.1}
  - {loss: kd, from: teacher.logits, to: student.logits, weight: 0.9, T: 4}
stages:
  - {name: teach, edges: ["ce:data->teacher"], epochs: 1}
  - {name: distill, edges: ["ce:data->student", "kd:teacher->student"], frozen: [teacher], epochs: 2}
train: {log_every: 1, eval: [teacher.logits, student.logits], progress: false}
deploy: student.logits
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@cache
def graph_diagram(path: Path) -> tuple[object, Diagram]:
    """(spec, diagram) of a graph file, built once per test session."""
    spec = load_for_drawing(path, [])
    plan, facts, refs = plan_for_drawing(spec)
    return spec, build_diagram(spec, plan, facts, refs)


def loss_edges(d: Diagram) -> list[draw.DEdge]:
    return [e for e in d.edges if e.kind == "loss" and not e.src.startswith("lg_")]


def check_structure(spec, d: Diagram) -> None:
    """Every node and every loss edge of the spec is drawn, labelled and present in both sources."""
    drawn = {n.name for n in d.nodes if n.name}
    assert set(spec.nodes) <= drawn
    ids = {n.id for n in d.nodes}
    for e in d.edges:
        assert e.src in ids and e.dst in ids, e
    edge_names = {e.name for e in loss_edges(d)}
    assert {e.name for e in spec.edges} <= edge_names | _unused_edges(spec)
    dot, mmd = to_dot(d), to_mermaid(d)
    for n in d.nodes:
        assert f'"{n.id}" [' in dot
        assert any(line.strip().startswith(n.id) for line in mmd.splitlines()), n.id
    for e in loss_edges(d):
        assert e.label.startswith(spec.edge(e.name).loss) or ": " in e.label
        assert "×" in e.label
        assert f'"{e.src}" -> "{e.dst}" [label={draw._dot_str(e.label)}' in dot
        arrow = "<-.->" if e.both else "-.->"
        label = draw._mmd_text(e.label).replace("\n", "<br/>")
        assert f'{e.src} {arrow}|"{label}"| {e.dst}' in mmd


def _unused_edges(spec) -> set[str]:
    used = {name for s in spec.stages for name in s.edges}
    return {e.name for e in spec.edges if e.name not in used}


# ----------------------------------------------------------------------------- every graph file


def test_graphs_are_found() -> None:
    assert any(p.name == "quickstart.yaml" for p in ALL_GRAPHS)


@pytest.mark.parametrize("path", ALL_GRAPHS, ids=lambda p: str(p.relative_to(GRAPHS)))
def test_every_graph_draws_as_dot_and_mermaid(path: Path) -> None:
    spec, d = graph_diagram(path)
    check_structure(spec, d)
    if spec.deploy:
        assert any(n.id == "deploy" for n in d.nodes)
        assert any(e.kind == "deploy" for e in d.edges)


@pytest.mark.slow
def test_drawing_needs_no_training_and_no_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    def forbidden(*args, **kwargs):
        raise AssertionError("drawing must not train or load anything")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(Trainer, "run", forbidden)
    monkeypatch.setattr(Trainer, "__init__", forbidden)
    # a teacher trained by another graph (init: from) and one read from a checkpoint that does not exist
    with_init = [p for p in ALL_GRAPHS if any(n.init for n in graph_diagram(p)[0].nodes.values())]
    for path in with_init + [write(tmp_path, "rich.yaml", RICH)]:
        d = diagram_of(path)
        assert any(line.startswith("init: ") for n in d.nodes for line in n.lines), path


# ----------------------------------------------------------------------------- SLKD


def test_slkd_nodes_edges_labels_and_styles(tmp_path: Path) -> None:
    d = diagram_of(write(tmp_path, "slkd.yaml", SLKD))
    nodes = {n.name: n for n in d.nodes if n.name}
    assert set(nodes) == {"data", "teacher", "slt1", "slt2", "student", "slt"}
    assert nodes["teacher"].state == "frozen" and "frozen" in nodes["teacher"].lines
    assert all(nodes[n].state == "trainable" for n in ("slt1", "slt2", "student"))
    assert (nodes["slt"].shape, nodes["slt"].state) == ("op", "plain")
    assert nodes["data"].shape == "data" and nodes["student"].shape == "net"
    assert nodes["teacher"].lines[1] == "resnet32x4 · 7.43M"
    labels = sorted((e.src, e.dst, e.label) for e in loss_edges(d))
    assert labels == sorted(
        [
            ("n_data", "n_student", "ce ×0.4"),
            ("n_teacher", "n_student", "kd T=4 ×0.9"),
            ("n_slt", "n_student", "kd T=4 ×2.7"),
            ("n_data", "n_slt1", "ce ×0.1"),
            ("n_teacher", "n_slt1", "kd T=4 ×0.9"),
            ("n_data", "n_slt2", "ce ×0.1"),
            ("n_teacher", "n_slt2", "kd T=4 ×0.9"),
        ]
    )
    # the learner side of every loss receives gradient; no source does (all detached)
    assert all(e.grad and not e.both for e in loss_edges(d))
    # the SL-teachers feed the mix, but the student's loss does not reach them through it
    flows = {(e.src, e.dst): e for e in d.edges if e.kind == "flow"}
    assert not flows[("n_slt1", "n_slt")].grad and flows[("n_slt1", "n_slt")].label == "logits"
    # deploy path: data -> student -> deploy; nothing else
    assert [n.name for n in d.nodes if n.deploy and n.name] == ["student"]
    assert flows[("n_data", "n_student")].deploy and not flows[("n_data", "n_teacher")].deploy
    assert any(e.src == "n_student" and e.dst == "deploy" and e.label == "logits" for e in d.edges)
    assert any(g.id == "legend" for g in d.groups)
    dot = to_dot(d)
    assert 'style="filled,rounded,dashed"' in dot  # the frozen teacher
    assert '"n_slt" [shape="hexagon"' in dot and '"n_data" [shape="cylinder"' in dot
    mmd = to_mermaid(d)
    assert "n_slt{{" in mmd and 'n_data[("' in mmd and "class n_teacher,lg_frozen frozen" in mmd
    assert 'n_teacher -.->|"kd T=4 ×0.9"| n_student' in mmd


def test_repository_slkd_has_five_nodes_and_seven_losses() -> None:
    path = GRAPHS / "slkd.yaml"
    if not path.exists():
        pytest.skip("graphs/slkd.yaml is not written yet")
    _, d = graph_diagram(path)
    assert len([n for n in d.nodes if n.name and n.name != "data"]) == 5
    assert len(loss_edges(d)) == 7 and all("×" in e.label for e in loss_edges(d))


# ----------------------------------------------------------------------------- stages, gradients, labels


def test_stages_are_clusters_with_their_own_losses_and_states(tmp_path: Path) -> None:
    d = diagram_of(write(tmp_path, "rich.yaml", RICH))
    assert [g.title for g in d.groups] == ["stage warm · 2 epochs", "stage match · 1 epoch", "legend"]
    warm = {n.name: n for n in d.nodes if n.group == "stage_0"}
    match = {n.name: n for n in d.nodes if n.group == "stage_1"}
    assert "match" not in warm and "temp" not in match  # each stage shows the nodes it uses
    assert warm["conn"].state == "trainable" and match["conn"].state == "frozen"
    assert match["match"].state == "fit" and "fitted from data" in match["match"].lines
    assert "stage init: end of stage warm" in match["end"].lines
    assert "init: teacher.pth" in warm["teacher"].lines
    # the deployed slice (head <- pooled <- conn <- end, teacher; head calls teacher.fc) in the last stage only
    assert {n for n, v in match.items() if v.deploy} == {"teacher", "end", "conn", "pooled", "head"}
    assert not any(v.deploy for v in warm.values())
    edges = {(e.src, e.dst, e.kind): e for e in d.edges}
    assert edges[("s0_end", "s0_conn", "flow")].grad  # the connector's loss trains the student through it
    assert not edges[("s0_teacher", "s0_conn", "flow")].grad  # frozen teacher: no gradient
    assert edges[("s0_temp", "s0_tgrl", "flow")].grad
    param = edges[("s0_tgrl", "s0_end", "param")]
    assert param.grad and param.label == "T of kd"
    assert edges[("s0_teacher", "s0_end", "loss")].label == "kd T=tgrl.out ×8 warmup 20"
    assert edges[("s0_teacher", "s0_conn", "loss")].label == "mse ×0.9 until 60"
    matched = edges[("s1_match", "s1_end", "loss")]
    assert matched.both and matched.label == "matched: mse ×1 (no detach)"
    assert edges[("s1_teacher", "s1_head", "ref")].label == "node: teacher.fc"
    assert edges[("s1_head", "deploy", "deploy")].label == "out"
    assert "factor=cos 0→-1 /10ep" in warm["tgrl"].lines
    mmd = to_mermaid(d)
    assert "s1_match <-.->" in mmd and 'title: "Rich: \\"quoted\\" <b> #1 | x"' in mmd


def test_stages_are_laid_out_in_order_in_both_directions(tmp_path: Path) -> None:
    d = diagram_of(write(tmp_path, "rich.yaml", RICH))
    (order,) = [e for e in d.edges if e.kind == "order"]  # the warm stage's last node before match's first
    stage_of = {n.id: n.group for n in d.nodes}
    assert (stage_of[order.src], stage_of[order.dst]) == ("stage_0", "stage_1")
    assert order.dst == next(n.id for n in d.nodes if n.group == "stage_1")
    assert f'"{order.src}" -> "{order.dst}" [style=invis' in to_dot(d)
    assert f"{order.src} ~~~ {order.dst}" in to_mermaid(d)
    tb = diagram_of(write(tmp_path, "rich.yaml", RICH), direction="TB")
    assert [(e.src, e.dst) for e in tb.edges if e.kind == "order"] == [(order.src, order.dst)]


def test_one_stage_only(tmp_path: Path) -> None:
    d = diagram_of(write(tmp_path, "rich.yaml", RICH), stage="match", legend=False)
    assert not d.groups and d.title.endswith("(stage match)")
    assert {n.name for n in d.nodes if n.name} == {"data", "teacher", "end", "conn", "match", "pooled", "head"}
    assert [e.name for e in loss_edges(d)] == ["matched"]
    with pytest.raises(draw.DrawError, match="did you mean 'warm'"):
        diagram_of(write(tmp_path, "rich.yaml", RICH), stage="wram")


@pytest.mark.parametrize(
    "value, text",
    [
        (0.9, "0.9"),
        (0.4000000000000001, "0.4"),
        (4, "4"),
        ({"value": 8.0, "warmup": 20}, "8 warmup 20"),
        ({"value": 0.9, "until": 60}, "0.9 until 60"),
        ({"value": 1, "from": 5}, "1 from 5"),
        ({"cosine": [0, -1], "epochs": 10}, "cos 0→-1 /10ep"),
        ({"linear": [1, 4], "epochs": 5}, "lin 1→4 /5ep"),
        ([0.5, 0.5], "[0.5, 0.5]"),
    ],
)
def test_schedules_are_compact(value, text) -> None:
    assert fmt_schedule(value) == text


def test_overrides_change_the_labels(tmp_path: Path) -> None:
    d = diagram_of(write(tmp_path, "slkd.yaml", SLKD), ["vars.T=8", "vars.alpha=0.5"])
    assert "kd T=8 ×0.5" in {e.label for e in loss_edges(d)}


# ----------------------------------------------------------------------------- a run directory


def test_run_results_take_the_last_records_of_each_stage() -> None:
    records = [
        {"kind": "train", "stage": "a", "losses": {"x": 3.0}},
        {"kind": "train", "stage": "a", "losses": {"x": 2.0}},
        {"kind": "eval", "stage": "a", "top1": {"s.logits": 10.0}},
        {"kind": "train", "stage": "b", "losses": {"y": 1.0}},
        {"kind": "eval", "stage": "b", "top1": {"s.logits": 50.0}},
    ]
    r = run_results(records)
    assert r.losses == {"a": {"x": 2.0}, "b": {"y": 1.0}}
    assert r.top1 == {"a": {"s.logits": 10.0}, "b": {"s.logits": 50.0}}


def test_run_directory_shows_final_losses_and_top1(tmp_path: Path) -> None:
    from kdgraph.spec import load_spec

    spec = load_spec(write(tmp_path, "two.yaml", TWO_STAGES))
    run = tmp_path / "run"
    Trainer(spec, run, log=lambda *_: None).run()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    d = diagram_of(run)
    for stage, group in (("teach", "stage_0"), ("distill", "stage_1")):
        last_train = [r for r in records if r["kind"] == "train" and r["stage"] == stage][-1]
        last_eval = [r for r in records if r["kind"] == "eval" and r["stage"] == stage][-1]
        for e in loss_edges(d):
            if d.node(e.dst).group == group:
                assert e.label.endswith(f"\nfinal {last_train['losses'][e.name]:.4g}")
        student = next(n for n in d.nodes if n.group == group and n.name == "student")
        assert f"top-1 {last_eval['top1']['student.logits']:.2f}%" in student.lines
    assert main(["draw", str(run), "-o", str(tmp_path / "run.mmd")]) == 0
    assert "final " in (tmp_path / "run.mmd").read_text()


# ----------------------------------------------------------------------------- command line


def test_cli_writes_dot_and_mermaid_and_prints_sources(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    graph = write(tmp_path, "slkd.yaml", SLKD)
    assert main(["draw", str(graph), "-o", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph kdgraph {")
    assert main(["draw", str(graph), "vars.T=2", "-o", str(tmp_path / "g.mmd")]) == 0
    assert "kd T=2" in (tmp_path / "g.mmd").read_text()
    capsys.readouterr()
    assert main(["draw", str(graph), "--format", "mmd", "--no-legend"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("---\ntitle:") and "legend" not in out


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    graph = write(tmp_path, "slkd.yaml", SLKD)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["draw", str(graph), "-o", str(tmp_path / "g.svg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install graphviz" in err and "brew install graphviz" in err
    assert main(["draw", str(graph), "-o", str(tmp_path / "g.jpg2")]) == 2
    assert "use .svg, .png, .pdf, .dot or .mmd" in capsys.readouterr().err
    assert main(["draw", str(tmp_path), "-o", str(tmp_path / "g.mmd")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["draw", str(graph), "vars.TT=2", "-o", str(tmp_path / "g.mmd")]) == 2
    assert "did you mean 'T'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real renderers


def _fixtures(tmp_path: Path) -> list[Path]:
    return ALL_GRAPHS + [write(tmp_path, "slkd_fixture.yaml", SLKD), write(tmp_path, "rich.yaml", RICH)]


def _diagram(path: Path) -> Diagram:
    return graph_diagram(path)[1] if path in ALL_GRAPHS else diagram_of(path)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed (apt-get install graphviz)")
def test_graphviz_renders_every_graph_to_svg(tmp_path: Path) -> None:
    for path in _fixtures(tmp_path):
        d = _diagram(path)
        out = tmp_path / f"{path.stem}.svg"
        render(d, out)
        svg = ET.parse(out).getroot()
        ns = {"s": "http://www.w3.org/2000/svg"}
        titles = {g.get("class"): [] for g in svg.iterfind(".//s:g", ns)}
        for g in svg.iterfind(".//s:g", ns):
            title = g.find("s:title", ns)
            if title is not None:
                titles.setdefault(g.get("class"), []).append(title.text)
        assert set(titles["node"]) == {n.id for n in d.nodes}, path
        drawn = [e for e in d.edges if e.kind != "order"]  # the stage-order links are invisible: not drawn
        assert len(titles["edge"]) == len(drawn), path
        text = " ".join(t.text or "" for t in svg.iterfind(".//s:text", ns))
        for e in loss_edges(d):
            assert e.label.split("\n")[0] in text, (path, e.label)
    render(_diagram(ALL_GRAPHS[0]), tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_mermaid_parser_accepts_every_graph(tmp_path: Path) -> None:
    """The official mermaid package parses every diagram and rejects a broken one (scripts/check_mermaid.mjs)."""
    required = os.environ.get("KDGRAPH_REQUIRE_MERMAID") == "1"  # CI sets it: no silent skip there
    if shutil.which("node") is None:
        if required:
            pytest.fail("KDGRAPH_REQUIRE_MERMAID=1 but node is not installed")
        pytest.skip("node is not installed")
    files = []
    for path in _fixtures(tmp_path):
        out = tmp_path / f"{path.stem}.mmd"
        out.write_text(to_mermaid(_diagram(path)))
        files.append(str(out))
    one_stage = tmp_path / "rich_match.mmd"
    one_stage.write_text(to_mermaid(diagram_of(tmp_path / "rich.yaml", stage="match")))
    files.append(str(one_stage))
    bad = write(tmp_path, "bad.mmd", 'flowchart LR\n  a["x "y" z"] --> b\n')
    proc = subprocess.run(["node", str(CHECK_MERMAID), *files, str(bad)], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3 and not required:
        pytest.skip("the mermaid npm package is not installed: " + proc.stderr.strip())
    assert proc.stdout.count(": ok (flowchart") == len(files), proc.stdout + proc.stderr
    assert proc.returncode == 1 and proc.stderr.startswith(f"{bad}: Parse error")


def test_pretrained_torchvision_weights_are_not_needed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached weights anywhere
    graph = SLKD.replace("{net: resnet32x4, frozen: true}", "{net: tv/resnet18, weights: DEFAULT, frozen: true}")
    d = diagram_of(write(tmp_path, "tv.yaml", graph))
    teacher = next(n for n in d.nodes if n.name == "teacher")
    assert teacher.lines[1] == "tv/resnet18 · 11.2M"  # with a fresh 100-class head


def test_docs_embed_the_current_slkd_diagram() -> None:
    """docs/diagrams.md shows what `kdgraph draw graphs/slkd.yaml --format mmd` prints today."""
    path = GRAPHS / "slkd.yaml"
    if not path.exists():
        pytest.skip("graphs/slkd.yaml is not written yet")
    text = (REPO / "docs" / "diagrams.md").read_text()
    start = text.index("```mermaid\n", text.index("<!-- slkd-mermaid:")) + len("```mermaid\n")
    block = text[start : text.index("```\n<!-- /slkd-mermaid -->")]
    assert block == to_mermaid(graph_diagram(path)[1]), (
        "docs/diagrams.md is stale: replace its slkd-mermaid block with `kdgraph draw graphs/slkd.yaml --format mmd`"
    )


def test_no_gradient_arrow_through_a_detach_op(tmp_path: Path) -> None:
    graph = """\
kdgraph: 1
name: probe
data: {dataset: digits}
nodes:
  student: {net: cnn, width: 4}
  frozen_feat: {op: detach, in: [student.pooled]}
  probe: {op: linear_head, in: [frozen_feat.out]}
edges:
  - {loss: ce, from: data.label, to: student.logits}
  - {loss: ce, from: data.label, to: probe.out}
"""
    d = diagram_of(write(tmp_path, "probe.yaml", graph))
    flows = {(e.src, e.dst): e for e in d.edges if e.kind == "flow"}
    assert not flows[("n_student", "n_frozen_feat")].grad and not flows[("n_frozen_feat", "n_probe")].grad
    assert "stops gradient" in d.node("n_frozen_feat").lines
    assert d.node("n_probe").state == "trainable"
