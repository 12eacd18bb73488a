"""--preset: the digits preset maps the zoo to tiny nets in the same roles; every graph runs with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kdgraph.cli import main
from kdgraph.errors import SpecError
from kdgraph.presets import apply_preset
from kdgraph.spec import load_spec

from .conftest import GRAPHS, REPO

SMOKE_PRESET = str(REPO / "tests" / "fixtures" / "presets" / "smoke.yaml")


def test_apply_preset_swaps_nets_and_keeps_the_topology() -> None:
    doc = {
        "vars": {"warmup": 20, "beta": 8},
        "data": {"dataset": "cifar100", "batch_size": 64},
        "nodes": {
            "teacher": {"net": "resnet32x4", "frozen": True, "init": {"from": "t.yaml"}},
            "student": {"net": "resnet8x4"},
            "proj": {"op": "projector", "in": ["student.feat3"]},
            "other": {"net": "cnn", "width": 4},
        },
        "train": {"epochs": 240, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
                  "lr_schedule": {"type": "step", "milestones": [150]}},
        "stages": [{"name": "a", "epochs": 30}, {"name": "fit", "epochs": 0}, {"name": "b"}],
    }
    preset = {
        "nets": {"resnet32x4": {"net": "resnet_tiny", "depth": 14}, "resnet8x4": {"net": "resnet_tiny", "depth": 8}},
        "data": {"dataset": "digits", "batch_size": 32},
        "train": {"epochs": 10, "optimizer": {"lr": 0.1}, "lr_schedule": {"type": "cosine"}},
        "stage_epochs": 10,
        "vars": {"warmup": 2, "not_declared": 1},
    }
    apply_preset(doc, preset)
    n = doc["nodes"]
    assert n["teacher"] == {"net": "resnet_tiny", "depth": 14, "frozen": True, "init": {"from": "t.yaml"}}
    assert n["student"] == {"net": "resnet_tiny", "depth": 8}
    assert n["other"] == {"net": "cnn", "width": 4} and n["proj"]["in"] == ["student.feat3"]
    assert doc["data"] == {"dataset": "digits", "batch_size": 32}
    assert doc["train"] == {"epochs": 10, "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9},
                            "lr_schedule": {"type": "cosine"}}
    assert [s.get("epochs") for s in doc["stages"]] == [10, 0, None]
    assert doc["vars"] == {"warmup": 2, "beta": 8}
    # a graph's own vars in the preset win over the general ones, for that graph only
    other = {"name": "review", "vars": {"warmup": 20, "t_channels": [64, 128]}}
    per_graph = {"review": {"vars": {"t_channels": [8, 16]}}}
    apply_preset(other, {"vars": {"warmup": 2, "t_channels": 64}, "graphs": per_graph})
    assert other["vars"] == {"warmup": 2, "t_channels": [8, 16]}


def test_later_overrides_win_and_the_preset_is_recorded() -> None:
    spec = load_spec(GRAPHS / "slkd.yaml", ["preset=digits", "train.epochs=3"])
    assert spec.train["epochs"] == 3 and spec.data["dataset"] == "digits"
    assert {spec.nodes[n].type for n in ("teacher", "slt1", "slt2")} == {"resnet_tiny"}
    assert spec.nodes["teacher"].params == spec.nodes["slt1"].params  # same-architecture peers stay so
    assert spec.overrides[0] == "preset=digits"  # run.json keeps it: --resume and dependencies see it


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(GRAPHS / "kd.yaml", ["preset=digit"])
    assert "no preset 'digit'" in str(err.value) and "digits" in str(err.value)


def test_a_user_preset_beside_the_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "mine.yaml").write_text("nets: {resnet8x4: {net: mlp, hidden: [16]}}\n")
    (tmp_path / "g.yaml").write_text((GRAPHS / "baseline.yaml").read_text())
    assert main(["validate", "--no-dry-run", str(tmp_path / "g.yaml"), "--preset", "mine"]) == 0
    assert load_spec(tmp_path / "g.yaml", ["preset=mine"]).nodes["student"].type == "mlp"


def _top1(out: str, port: str) -> float:
    return float(re.search(rf"{re.escape(port)}: top-1 ([\d.]+)%", out).group(1))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("preset-cache")  # one tiny teacher per zoo teacher for the whole module


@pytest.mark.slow
@pytest.mark.parametrize("graph", sorted(p.name for p in GRAPHS.glob("*.yaml")))
def test_every_graph_runs_with_the_digits_preset(
    graph: str, shared_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KDGRAPH_CACHE", str(shared_cache))
    assert main(["run", str(GRAPHS / graph), "--preset", "digits", f"preset={SMOKE_PRESET}", "--quiet"]) == 0
    assert re.search(r": top-1 [\d.]+%", capsys.readouterr().out)


@pytest.mark.slow
def test_slkd_on_digits_reaches_90(shared_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KDGRAPH_CACHE", str(shared_cache))
    assert main(["run", str(GRAPHS / "slkd.yaml"), "--preset", "digits", "--quiet"]) == 0
    assert _top1(capsys.readouterr().out, "student.logits") >= 90.0
