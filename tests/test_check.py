"""check_graph builds a graph once and dry-runs it once; one `kdgraph run` (or `--resume`) does no more."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from kdgraph import check
from kdgraph.check import check_graph, check_spec
from kdgraph.cli import main
from kdgraph.graph import DistillGraph
from kdgraph.spec import load_spec

from .conftest import GRAPHS, SMOKE, node_state, same


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, Counter]:
    """Constructions of DistillGraph and dry runs, counted per graph name."""
    counts = {"built": Counter(), "probed": Counter()}
    init, probe = DistillGraph.__init__, check.probe

    def counting_init(self, spec, data):
        if torch.empty(0).device.type != "meta":  # validate's init check builds dependencies weightless, on meta
            counts["built"][spec.name] += 1
        init(self, spec, data)

    def counting_probe(graph, batch=2):
        counts["probed"][graph.spec.name] += 1
        probe(graph, batch)

    monkeypatch.setattr(DistillGraph, "__init__", counting_init)
    monkeypatch.setattr(check, "probe", counting_probe)
    return counts


@pytest.mark.slow
def test_one_run_builds_each_graph_once_and_dry_runs_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: dict[str, Counter]
) -> None:
    monkeypatch.setenv("KDGRAPH_CACHE", str(tmp_path / "cache"))
    assert main(["run", str(GRAPHS / "quickstart.yaml"), "--out", str(tmp_path / "run"), *SMOKE]) == 0
    # the teacher's graph (init: from) is trained first, in its own run: also built and checked once
    assert counted["built"] == {"quickstart": 1, "digits_cnn": 1}
    assert counted["probed"] == {"quickstart": 1, "digits_cnn": 1}


@pytest.mark.slow
def test_resume_builds_the_graph_once_and_dry_runs_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counted: dict[str, Counter]
) -> None:
    monkeypatch.setenv("KDGRAPH_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["run", str(GRAPHS / "quickstart.yaml"), "--out", str(run), "~nodes.teacher.init", *SMOKE]
    assert main([*args, "--stop-after", "1"]) == 0  # a planned pause is a success
    counted["built"].clear()
    counted["probed"].clear()
    assert main(["run", "--resume", str(run)]) == 0
    assert counted["built"] == {"quickstart": 1} and counted["probed"] == {"quickstart": 1}


def test_the_checked_graph_has_the_weights_of_a_fresh_build() -> None:
    """The dry run's backward, fits and RNG draws are undone: training starts from the seeded build."""
    spec = load_spec(GRAPHS / "quickstart.yaml", ["~nodes.teacher.init", *SMOKE])
    dry = check_spec(spec).graph
    after_dry = torch.rand(3)
    fresh = check_spec(spec, dry=False).graph
    after_fresh = torch.rand(3)
    assert same(node_state(dry.state_dict(), "student"), node_state(fresh.state_dict(), "student"))
    assert torch.equal(after_dry, after_fresh)  # the RNG is where a plain build leaves it
    assert list(dry.gradless) == [0] and all(p.grad is None for p in dry.parameters())  # probed, grads cleared


def test_check_graph_unpacks_as_spec_and_graph() -> None:
    spec, graph = check_graph(GRAPHS / "quickstart.yaml", ["~nodes.teacher.init", *SMOKE], dry=False)
    assert spec.name == "quickstart" and isinstance(graph, DistillGraph) and graph.spec is spec
