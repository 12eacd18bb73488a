"""Every graph file: it validates and plans, every stage runs a couple of steps, its deploy port exports.

Plus what the seed methods must show: TESKD deploys 11,220,132 parameters; KCD resets its student to theta0
after fitting a permutation; SKD's simplifier and student learn from the SKD edge while the teacher does
not; TESKD's backbone learns through the branches' KL targets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kdgraph.cli import main
from kdgraph.data import data_info, data_info_of
from kdgraph.errors import PlanError
from kdgraph.export import deployed_parameter_count, export_run, load_exported
from kdgraph.graph import DataInfo, DistillGraph
from kdgraph.spec import GraphSpec, load_spec
from kdgraph.train import Trainer

from .conftest import GRAPHS, SMOKE, load, node_state, same

GRAPH_FILES = sorted(str(p.relative_to(GRAPHS)) for p in GRAPHS.rglob("*.yaml") if p.parent.name != "presets")
# nets whose BatchNorm degenerates on 8 x 8 images in batches of 2 (ResNet50's 1 x 1 last stage diverges in 2 steps)
SMOKE_IMAGE_SIZE = {"teachers/ResNet50.yaml": 16}


def smoke_overrides(path: Path, image_size: int = 8) -> list[str]:
    """SMOKE on small images, one epoch per stage (a fit-only stage keeps its 0), no teacher trained first.

    8 x 8 images cost the CIFAR nets 16 times less than 32 x 32 and every stage still runs (a net that
    needs larger inputs, e.g. VGG's five poolings, gets its dry run's error and is run at 32 x 32).
    """
    spec = load_spec(path)
    overrides = [*SMOKE, f"++data.image_size={image_size}"]
    for name, node in spec.nodes.items():
        if node.init and ("from" in node.init or "checkpoint" in node.init):
            overrides.append(f"~nodes.{name}.init")
    if spec.doc.get("stages"):
        for stage in spec.stages:
            overrides.append(f"++stages.{stage.index}.epochs={min(stage.epochs, 1)}")
            for name, init in stage.init.items():
                if "from" in init or "checkpoint" in init:
                    overrides.append(f"~stages.{stage.index}.init.{name}")
    else:
        overrides.append("++train.epochs=1")
    return overrides


@dataclass
class SmokeRun:
    spec: GraphSpec
    run_dir: Path
    log: list[str] = field(default_factory=list)
    initial: dict[str, torch.Tensor] = field(default_factory=dict)  # every weight before the first stage
    inits: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)  # (stage, node) -> after init
    graph: DistillGraph | None = None  # the trained graph, as the run left it


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    """Run a graph file once per session on synthetic data, recording its log and its init actions."""
    done: dict[str, SmokeRun] = {}

    def run(rel: str) -> SmokeRun:
        if rel not in done:
            path = GRAPHS / rel
            try:
                size = SMOKE_IMAGE_SIZE.get(rel, 8)
                done[rel] = _smoke_run(path, load_spec(path, smoke_overrides(path, size)), tmp_path_factory)
            except PlanError:  # its dry run says the images are too small for its nets: the CIFAR size
                done[rel] = _smoke_run(path, load_spec(path, smoke_overrides(path, 32)), tmp_path_factory)
        return done[rel]

    return run


def _smoke_run(path: Path, spec: GraphSpec, factory: pytest.TempPathFactory) -> SmokeRun:
    folder = factory.mktemp(str(path.relative_to(GRAPHS)).replace("/", "_").removesuffix(".yaml"))
    result = SmokeRun(spec, folder / "run")
    trainer = Trainer(spec, result.run_dir)
    stage = [""]

    def log(line: str) -> None:
        result.log.append(line)
        if line.startswith("stage "):
            stage[0] = line.split()[1].rstrip(":")
            if not result.initial:
                result.initial = {k: v.clone() for k, v in trainer.graph.state_dict().items()}
        elif line.startswith("  init "):
            node = line.split()[1].rstrip(":")
            state = trainer.graph.nodes[node].state_dict()
            result.inits[(stage[0], node)] = {k: v.clone() for k, v in state.items()}

    trainer.log = log
    trainer.run()
    result.graph = trainer.graph
    return result





@pytest.mark.slow
@pytest.mark.parametrize("rel", GRAPH_FILES)
def test_graph_plans_runs_every_stage_and_exports(rel: str, smoke, tmp_path: Path) -> None:
    path = GRAPHS / rel
    text = path.read_text()
    assert text.startswith("#") and "Run: kdgraph run" in text, "header: citation, sources and the run command"
    spec = load_spec(path)  # as written: its own data facts (100 classes for CIFAR graphs)
    with torch.device("meta"):  # planning reads shapes and counts, never values: no weights to initialise
        plan = DistillGraph(spec, data_info(spec.data)).plan
    assert [s.name for s in plan.stages] == [s.name for s in spec.stages]

    run = smoke(rel)
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    for stage in run.spec.stages:
        mine = [r for r in records if r["stage"] == stage.name and r["kind"] == "train"]
        if stage.epochs == 0:
            assert not mine  # a fit-only stage
            continue
        assert mine, f"stage {stage.name} trained nothing"
        assert set(mine[-1]["losses"]) == set(stage.edges)
        assert all(v == v and abs(v) != float("inf") for r in mine for v in r["losses"].values()), stage.name

    if not run.spec.deploy:
        return
    out = tmp_path / "model.pt"
    report = export_run(run.run_dir, out, torchscript=False)  # TorchScript: tests/test_export.py
    model = load_exported(out)
    graph, info = run.graph, run.graph.data_info  # the run's own graph, with its final weights
    graph.eval()
    image = torch.randn(3, info.channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(1))
    expected = graph.outputs(image, [run.spec.deploy])[run.spec.deploy]
    with torch.no_grad():
        assert torch.allclose(model(image), expected, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) == report["parameters"] == deployed_parameter_count(graph)


def test_teskd_plan_deploys_the_backbone_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(GRAPHS / "teskd.yaml")]) == 0
    out = capsys.readouterr().out
    assert "deploy backbone.logits: nodes backbone; 11,220,132 deployed parameters" in out


def test_kcd_fits_a_permutation_then_resets_the_student_to_theta0(smoke) -> None:
    run = smoke("kcd.yaml")
    stages = [s.name for s in run.spec.stages]
    assert stages == ["train_ce", "match_channels", "distill"]
    # stage 2 fitted the matching on the student trained in stage 1, and said so
    fitted = [i for i, line in enumerate(run.log) if line.startswith("  fitted match on ")]
    reset = [i for i, line in enumerate(run.log) if line.startswith("  init student")]
    marks = {line.split()[1].rstrip(":"): i for i, line in enumerate(run.log) if line.startswith("stage ")}
    assert len(fitted) == 1 and marks["match_channels"] < fitted[0] < marks["distill"] < reset[0]
    perm = load(run.run_dir / "stage_ends" / "match_channels.pt")["nodes.match.perm"]
    assert sorted(perm.tolist()) == list(range(64))  # bipartite: a permutation of the 64 channels
    assert not torch.equal(perm, torch.arange(64))  # found on real features: not the identity
    # stage 3 started from theta0: the weights the student had when stage 1 began, not those it ended with
    theta0 = node_state(run.initial, "student")
    at_distill = run.inits[("distill", "student")]
    assert same(at_distill, theta0)
    assert same(node_state(load(run.run_dir / "snapshots" / "train_ce.pt"), "student"), theta0)
    assert not same(node_state(load(run.run_dir / "stage_ends" / "train_ce.pt"), "student"), theta0)
    # the permutation survives into the distillation stage and the teacher never trains
    final = load(run.run_dir / "final.pt")
    assert torch.equal(final["nodes.match.perm"], perm)
    assert same(node_state(final, "teacher"), node_state(run.initial, "teacher"))


def one_edge_backward(rel: str, edge_name: str) -> DistillGraph:
    """Build a graph file on synthetic data, weight every edge but one 0, run one step's backward."""
    path = GRAPHS / rel
    spec = load_spec(path, smoke_overrides(path))
    zeroed = [f"++edges.{e.index}.weight=0" for e in spec.edges if e.name != edge_name]
    spec = load_spec(path, smoke_overrides(path) + zeroed)
    classes, channels, size = data_info_of(spec.data)
    graph = DistillGraph(spec, DataInfo(classes, channels, size))
    graph.set_stage(graph.plan.stages[0])
    torch.manual_seed(0)
    image = torch.randn(4, channels, size, size)
    label = torch.arange(4) % classes
    total, _ = graph(image, label, torch.arange(4))
    total.backward()
    return graph


def classifier(net: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]


def grads(module: torch.nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_skd_edge_trains_simplifier_and_student_not_teacher() -> None:
    graph = one_edge_backward("skd.yaml", "kd:simplifier->student")
    assert graph.spec.edge("kd:simplifier->student").detach is False
    for node in ("simplifier", "student"):
        assert any(g is not None and g.abs().sum() > 0 for g in grads(graph.nodes[node])), node
    assert all(g is None for g in grads(graph.nodes["teacher"]))
    assert not any(p.requires_grad for p in graph.nodes["teacher"].parameters())
    # and the simplifier has its own param group at lr 3e-5 (kdgraph plan shows it; the trainer builds it)
    assert graph.spec.nodes["simplifier"].optim == {"lr": 3.0e-5, "weight_decay": 5.0e-4}


@pytest.mark.slow
def test_teskd_backbone_learns_through_the_branch_kl_targets() -> None:
    graph = one_edge_backward("teskd.yaml", "kl_prob:backbone->b1")
    # the backbone's classifier feeds the branches nothing but this KL's target: its gradient comes from there
    fc = classifier(graph.nodes["backbone"]).weight.grad
    assert fc is not None and fc.abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for g in grads(graph.nodes["b1"]))
    # with the target detached (the default for other edges) the classifier would get none
    path = GRAPHS / "teskd.yaml"
    spec = load_spec(path, smoke_overrides(path))
    index = spec.edge("kl_prob:backbone->b1").index
    detached = load_spec(
        path,
        smoke_overrides(path)
        + [f"++edges.{e.index}.weight=0" for e in spec.edges if e.index != index]
        + [f"edges.{index}.detach=true"],
    )
    classes, channels, size = data_info_of(detached.data)
    graph = DistillGraph(detached, DataInfo(classes, channels, size))
    graph.set_stage(graph.plan.stages[0])
    torch.manual_seed(0)
    total, _ = graph(torch.randn(4, channels, size, size), torch.arange(4) % classes, torch.arange(4))
    total.backward()
    fc = classifier(graph.nodes["backbone"]).weight.grad
    assert fc is None or fc.abs().sum() == 0
