"""`--pair NAME`: a graph file's `pairs:` table turned into overrides, on kd.yaml and dkd.yaml.

Facts asserted (not read back from the tables): the pairs of the issue, DKD's beta per pair from
mdistiller's configs/cifar100/dkd/*.yaml (2 for the resnet56/110 pairs, 6 for vgg13-vgg8, the wrn_40_2
same-family pairs and vgg13-MobileNetV2, 8 otherwise) and lr 0.01 for MobileNetV2 / ShuffleNet students.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdgraph.cli import main
from kdgraph.errors import SpecError
from kdgraph.pairs import expand_pair, pair_rows
from kdgraph.spec import load_spec

from .conftest import GRAPHS, SMOKE

PAIRS = {  # name: (teacher, student, DKD beta)
    "resnet56-resnet20": ("resnet56", "resnet20", 2.0),
    "resnet110-resnet32": ("resnet110", "resnet32", 2.0),
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4", 8.0),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2", 6.0),
    "wrn_40_2-wrn_40_1": ("wrn_40_2", "wrn_40_1", 6.0),
    "vgg13-vgg8": ("vgg13", "vgg8", 6.0),
    "vgg13-MobileNetV2": ("vgg13", "MobileNetV2", 6.0),
    "ResNet50-MobileNetV2": ("ResNet50", "MobileNetV2", 8.0),
    "resnet32x4-ShuffleV1": ("resnet32x4", "ShuffleV1", 8.0),
    "resnet32x4-ShuffleV2": ("resnet32x4", "ShuffleV2", 8.0),
    "wrn_40_2-ShuffleV1": ("wrn_40_2", "ShuffleV1", 8.0),
}
SMALL_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}


@pytest.mark.parametrize("graph", ["kd.yaml", "dkd.yaml"])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_every_pair_resolves_nets_teacher_graph_lr_and_beta(graph: str, pair: str) -> None:
    teacher, student, beta = PAIRS[pair]
    path = GRAPHS / graph
    spec = load_spec(path, expand_pair(path, pair))
    assert (spec.nodes["teacher"].type, spec.nodes["student"].type) == (teacher, student)
    assert spec.nodes["teacher"].init == {"from": f"teachers/{teacher}.yaml"}
    assert (GRAPHS / "teachers" / f"{teacher}.yaml").exists()  # --pair resolves its teacher
    assert spec.doc["vars"]["lr"] == (0.01 if student in SMALL_STUDENTS else 0.05)
    assert spec.doc["train"]["optimizer"]["lr"] == spec.doc["vars"]["lr"]
    if graph == "dkd.yaml":
        assert spec.doc["vars"]["beta"] == beta
        assert spec.edge("dkd:teacher->student").params["beta"] == beta
    published = spec.doc["published"]
    assert published["pair"] == f"{teacher}->{student}" and 60 < published["top1"] < 80


def test_list_pairs_shows_the_published_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "pairs", str(GRAPHS / "dkd.yaml")]) == 0
    out = capsys.readouterr().out
    assert set(PAIRS) <= {line.split()[0] for line in out.splitlines()[1:]}
    row = next(r for r in pair_rows(GRAPHS / "dkd.yaml") if r["pair"] == "vgg13-vgg8")
    assert (row["teacher"], row["student"], row["top1"]) == ("vgg13", "vgg8", "74.68")  # DKD, Table 1
    assert "beta=6.0" in row["vars"]


def test_the_command_line_overrides_the_pair(capsys: pytest.CaptureFixture[str]) -> None:
    path = GRAPHS / "dkd.yaml"
    spec = load_spec(path, expand_pair(path, "vgg13-vgg8") + ["vars.beta=3.0"])
    assert spec.doc["vars"]["beta"] == 3.0 and spec.nodes["student"].type == "vgg8"


def test_the_pairs_table_is_not_part_of_the_hash() -> None:
    path = GRAPHS / "dkd.yaml"
    assert load_spec(path).hash() == load_spec(path, ["~pairs"]).hash()


def test_unknown_pair_and_unknown_var_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(GRAPHS / "dkd.yaml"), "--pair", "vgg13-vgg9"]) == 2
    err = capsys.readouterr().err
    assert "dkd.yaml:" in err and "no pair 'vgg13-vgg9'" in err and "did you mean 'vgg13-vgg8'" in err
    assert "Traceback" not in err
    doc = yaml.safe_load((GRAPHS / "kd.yaml").read_text())
    doc["nodes"]["teacher"].pop("init")
    doc["pairs"] = {"a-b": {"nodes": {"student": {"net": "resnet20"}}, "vars": {"betta": 2.0}},
                    "c-d": {"nodes": {"studnet": {"net": "resnet20"}}}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(bad), "--pair", "a-b", "--no-dry-run"]) == 2
    assert "vars.betta" in capsys.readouterr().err  # strict: a pair sets existing vars only
    assert main(["validate", str(bad), "--pair", "c-d", "--no-dry-run"]) == 2
    err = capsys.readouterr().err
    assert "no node 'studnet'" in err and "did you mean 'student'" in err
    doc["pairs"] = {"a-b": {"nodse": {}}}
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match="pairs"):  # the schema checks the table on every load
        load_spec(bad)


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["kd.yaml", "dkd.yaml"])
def test_plan_shows_every_pairs_nets_and_beta(graph: str, capsys: pytest.CaptureFixture[str]) -> None:
    for pair, (teacher, student, beta) in PAIRS.items():
        assert main(["plan", str(GRAPHS / graph), "--pair", pair]) == 0
        out = capsys.readouterr().out
        assert f"net {teacher} " in out and f"net {student} " in out
        assert f"pair {pair}: teacher {teacher}, student {student}" in out
        if graph == "dkd.yaml":
            assert f"beta={beta}" in out


@pytest.mark.slow
def test_run_with_a_pair_records_its_overrides_for_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", str(GRAPHS / "dkd.yaml"), "--pair", "resnet56-resnet20", *SMOKE, "++data.image_size=8",
            "train.epochs=1", "~nodes.teacher.init", "--out", str(out)]
    assert main(args) == 0
    info = json.loads((out / "run.json").read_text())
    assert "vars.beta=2.0" in info["overrides"] and '++nodes.student.net="resnet20"' in info["overrides"]
    spec = load_spec(info["source"], info["overrides"])
    assert spec.nodes["student"].type == "resnet20" and "init" not in spec.doc["nodes"]["teacher"]


FIVE_STAGES = {"vgg13", "vgg8", "MobileNetV2", "ResNet50"}  # RepDistiller's feature lists of six: feat0..feat4, pooled


@pytest.mark.parametrize("graph", ["pkt.yaml", "sp.yaml", "cc.yaml", "vid.yaml", "nst.yaml"])
def test_zoo_graphs_take_every_pair_with_repdistillers_positions(graph: str) -> None:
    path = GRAPHS / graph
    for pair, (teacher, student, _) in PAIRS.items():
        spec = load_spec(path, expand_pair(path, pair))
        assert (spec.nodes["teacher"].type, spec.nodes["student"].type) == (teacher, student)
        assert spec.doc["train"]["optimizer"]["lr"] == (0.01 if student in SMALL_STUDENTS else 0.05)
        five = teacher in FIVE_STAGES and student in FIVE_STAGES
        if graph == "sp.yaml":  # feat[-2]: the last stage's map
            edge = spec.edge("sp")
            assert (edge.target, edge.pred) == (f"teacher.feat{4 if teacher in FIVE_STAGES else 3}",
                                            f"student.feat{4 if student in FIVE_STAGES else 3}")
        if graph in ("vid.yaml", "nst.yaml"):  # feat[1:-1]: every stage output but the first
            positions = sorted(e.pred.split(".")[0] if graph == "vid.yaml" else e.pred.split(".")[1]
                               for e in spec.edges if e.loss in ("vid", "nst"))
            want = [f"vid{k}" for k in range(1, 5 if five else 4)] if graph == "vid.yaml" else \
                [f"feat{k}" for k in range(1, 5 if five else 4)]
            assert positions == want, pair


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["vid.yaml", "nst.yaml", "sp.yaml", "cc.yaml"])
def test_five_stage_pairs_pass_the_dry_run(graph: str) -> None:
    for pair in ("vgg13-vgg8", "vgg13-MobileNetV2"):
        assert main(["validate", str(GRAPHS / graph), "--pair", pair]) == 0


def test_a_pair_without_a_number_drops_the_files_number_for_another_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load((GRAPHS / "sp.yaml").read_text())  # published: 72.94 on resnet32x4->resnet8x4
    doc["nodes"]["teacher"].pop("init")
    doc["pairs"] = {"resnet32x4-resnet8x4": {"nodes": {"student": {"net": "resnet8x4"}}},
                    "vgg13-vgg8": {"nodes": {"teacher": {"net": "vgg13"}, "student": {"net": "vgg8"}}}}
    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert "published" not in load_spec(path, expand_pair(path, "vgg13-vgg8")).doc
    assert load_spec(path, expand_pair(path, "resnet32x4-resnet8x4")).doc["published"]["top1"] == 72.94
    assert main(["plan", str(path), "--pair", "vgg13-vgg8"]) == 0
    assert "pair vgg13-vgg8: teacher vgg13, student vgg8; published n/r" in capsys.readouterr().out


@pytest.mark.parametrize("graph", ["fsp.yaml", "kdsvd.yaml"])
def test_same_width_pairs_get_a_position_more_on_vgg(graph: str) -> None:
    path = GRAPHS / graph
    loss = graph.split(".")[0]
    counts = {p: sum(e.loss == loss for e in load_spec(path, expand_pair(path, p)).edges)
              for p in ("resnet56-resnet20", "vgg13-vgg8")}
    assert counts == ({"resnet56-resnet20": 3, "vgg13-vgg8": 4} if loss == "fsp" else
                      {"resnet56-resnet20": 2, "vgg13-vgg8": 3})
    if loss == "fsp":
        assert load_spec(path, expand_pair(path, "vgg13-vgg8")).stages[0].edges == ["fsp1", "fsp2", "fsp3", "fsp4"]


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["fsp.yaml", "kdsvd.yaml"])
def test_same_width_vgg_pair_passes_the_dry_run(graph: str) -> None:
    assert main(["validate", str(GRAPHS / graph), "--pair", "vgg13-vgg8"]) == 0
