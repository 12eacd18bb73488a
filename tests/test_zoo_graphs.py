"""The CRD, OFD, ReviewKD, FT and AB graphs end to end on tiny data: validate, plan, every stage trains.

Plus what each recipe's stages must do: CRD's bank and Z are state the run leaves in its checkpoint; FT's
paraphraser learns only in its pre-training stage; AB's init stage moves the student's features but not
its classifier, and the CE stage then trains on from there.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdgraph.cli import main
from kdgraph.spec import load_spec
from kdgraph.train import Trainer

from .conftest import GRAPHS, load, node_state, same
from .test_graphs import smoke_overrides

ZOO = ["crd.yaml", "ofd.yaml", "reviewkd.yaml", "ft.yaml", "ab.yaml"]


def initial_state(rel: str, tmp_path) -> dict[str, torch.Tensor]:
    """The weights a smoke run of `rel` starts from (built once, as the run builds them)."""
    path = GRAPHS / rel
    trainer = Trainer(load_spec(path, smoke_overrides(path)), tmp_path / "probe", log=lambda *_: None)
    trainer._prepare()
    return {k: v.clone() for k, v in trainer.graph.state_dict().items()}


def smoke_run(rel: str, tmp_path) -> tuple[list[dict], object]:
    path = GRAPHS / rel
    spec = load_spec(path, smoke_overrides(path))
    run_dir = tmp_path / "run"
    Trainer(spec, run_dir, log=lambda *_: None).run()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for stage in spec.stages:
        mine = [r for r in records if r["stage"] == stage.name and r["kind"] == "train"]
        assert mine and set(mine[-1]["losses"]) == set(stage.edges), stage.name
        assert all(math.isfinite(v) for r in mine for v in r["losses"].values()), stage.name
    return records, run_dir


@pytest.mark.slow
@pytest.mark.parametrize("rel", ZOO)
def test_zoo_graph_validates_plans_and_runs_every_stage(rel: str, tmp_path, capsys) -> None:
    assert main(["validate", str(GRAPHS / rel)]) == 0
    assert main(["plan", str(GRAPHS / rel)]) == 0
    assert "student" in capsys.readouterr().out
    smoke_run(rel, tmp_path)


@pytest.mark.slow
def test_crd_run_leaves_its_bank_in_the_checkpoint(tmp_path) -> None:
    _, run_dir = smoke_run("crd.yaml", tmp_path)
    final = load(run_dir / "final.pt")
    assert final["nodes.contrast.memory_s"].shape == (8, 128)  # the smoke run's 8 training samples
    assert final["nodes.contrast.Z"].min() > 0
    assert (final["nodes.contrast.labels"] >= 0).sum() >= 2  # the rows of the batches it saw


@pytest.mark.slow
def test_ft_paraphraser_learns_only_in_its_stage(tmp_path) -> None:
    start = node_state(initial_state("ft.yaml", tmp_path), "paraphraser")
    _, run_dir = smoke_run("ft.yaml", tmp_path)
    after_pretraining = node_state(load(run_dir / "stage_ends" / "paraphraser.pt"), "paraphraser")
    assert not same(start, after_pretraining)
    assert same(after_pretraining, node_state(load(run_dir / "final.pt"), "paraphraser"))


@pytest.mark.slow
def test_ab_init_moves_features_not_the_classifier(tmp_path) -> None:
    start = node_state(initial_state("ab.yaml", tmp_path), "student")
    _, run_dir = smoke_run("ab.yaml", tmp_path)
    after_init = node_state(load(run_dir / "stage_ends" / "init.pt"), "student")
    assert torch.equal(start["fc.weight"], after_init["fc.weight"])
    assert not torch.equal(start["layer1.0.conv1.weight"], after_init["layer1.0.conv1.weight"])
    final = node_state(load(run_dir / "final.pt"), "student")
    assert not torch.equal(final["fc.weight"], after_init["fc.weight"])  # CE trains it in stage 2
