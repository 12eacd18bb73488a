"""kdgraph report on run directories written by hand: grouping, statistics, published, formats, errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from kdgraph.cli import main
from kdgraph.report import find_runs, published_entry, table

PUBLISHED = [
    {"top1": 73.33, "pair": "resnet32x4->resnet8x4", "source": "DKD (arXiv:2203.08679), Table 1", "epochs": 240},
    {"top1": 70.66, "pair": "vgg13->vgg8", "source": "DKD (arXiv:2203.08679), Table 1", "epochs": 240},
]
SPEC = {
    "name": "kd",
    "nodes": {"teacher": {"net": "resnet32x4", "frozen": True}, "student": {"net": "resnet8x4"}},
    "deploy": "student.logits",
    "published": PUBLISHED,
}


def write_run(
    folder: Path,
    overrides: list[str],
    top1: list[dict[str, float]],
    finished: bool = True,
    stages: list[str] | None = None,
    speed: float = 100.0,
    peak: float = 500.0,
    spec: dict | None = None,
) -> Path:
    """A run directory as kdgraph run leaves it: run.json, spec.yaml, metrics.jsonl (+ summary.json)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"name": "kd", "overrides": overrides}))
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec or SPEC))
    lines = []
    for epoch, (values, stage) in enumerate(zip(top1, stages or ["main"] * len(top1)), 1):
        train = {"kind": "train", "stage": stage, "epoch": epoch, "step": 2 * epoch, "images_per_s": speed}
        lines.append(json.dumps({**train, "peak_memory_mb": peak}))
        lines.append(json.dumps({"kind": "eval", "stage": stage, "epoch": epoch, "step": 2 * epoch, "top1": values}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (folder / "summary.json").write_text("{}")
    return folder


def curve(student: list[float], teacher: float = 80.0) -> list[dict[str, float]]:
    return [{"teacher.logits": teacher, "student.logits": s} for s in student]


def test_seeds_are_grouped_into_variants_with_sample_std(tmp_path: Path) -> None:
    # variant T=2: student best 72, 74, 73; last 71, 74, 72 (hand-computed below); variant T=4: one run
    write_run(tmp_path / "a" / "s0", ["vars.T=2", "train.seed=0"], curve([70, 72, 71]), speed=100, peak=400)
    write_run(tmp_path / "a" / "s1", ["vars.T=2", "train.seed=1"], curve([73, 74, 74]), speed=300, peak=600)
    write_run(tmp_path / "a" / "s2", ["vars.T=2", "train.seed=2"], curve([73, 72]))
    write_run(tmp_path / "a" / "s3", ["vars.T=2", "train.seed=3"], curve([10]), finished=False)
    write_run(tmp_path / "a" / "t0", ["vars.T=4", "train.seed=0"], curve([60, 65]))
    rows = {(r["variant"], r["port"]): r for r in table(find_runs([tmp_path / "a"]))}
    assert set(rows) == {(v, p) for v in ("kd vars.T=2", "kd vars.T=4") for p in ("teacher.logits", "student.logits")}
    row = rows[("kd vars.T=2", "student.logits")]
    assert row["n"] == 3 and row["unfinished"] == 1
    assert row["best_top1"]["mean"] == pytest.approx(73.0)
    assert row["best_top1"]["std"] == pytest.approx(1.0)  # sqrt(((72-73)^2 + (74-73)^2 + 0) / (3 - 1))
    assert row["last_top1"]["mean"] == pytest.approx(217 / 3)
    assert row["last_top1"]["std"] == pytest.approx(
        (((71 - 217 / 3) ** 2 + (74 - 217 / 3) ** 2 + (72 - 217 / 3) ** 2) / 2) ** 0.5
    )
    assert row["published"]["top1"] == 73.33 and row["delta_best"] == pytest.approx(73.0 - 73.33)
    assert row["images_per_s"] == pytest.approx((100 + 300 + 100) / 3)  # s2: the defaults, 100 and 500
    assert row["peak_memory_mb"] == pytest.approx((400 + 600 + 500) / 3)
    assert rows[("kd vars.T=2", "teacher.logits")]["published"] is None  # published is the deployed port's
    single = rows[("kd vars.T=4", "student.logits")]
    assert single["n"] == 1 and single["best_top1"]["std"] is None and single["last_top1"]["mean"] == 65


def test_markdown_csv_and_json_say_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed, student in enumerate([[70, 72], [74, 73]]):
        write_run(tmp_path / f"s{seed}", [f"train.seed={seed}"], curve(student))
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    md = capsys.readouterr().out
    line = next(x for x in md.splitlines() if "`student.logits`" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    # best 72, 74 -> 73.00 ± 1.41; last 72, 73 -> 72.50 ± 0.71; published 73.33
    assert cells == [
        "kd",
        "`student.logits`",
        "2",
        "73.00 ± 1.41",
        "72.50 ± 0.71",
        "73.33 [1]",
        "-0.33",
        "-0.83",
        "100",
        "500",
    ]
    assert "[1] DKD (arXiv:2203.08679), Table 1, pair resnet32x4->resnet8x4, 240 epochs; these runs 2" in md
    assert "ddof = 1" in md
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "-o", str(tmp_path / "t.csv")]) == 0
    assert capsys.readouterr().out.startswith("wrote ")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    student = next(r for r in rows if r["port"] == "student.logits")
    assert float(student["best_mean"]) == 73.0 and float(student["last_std"]) == pytest.approx(0.5**0.5)
    assert main(["report", str(tmp_path / "s0"), str(tmp_path / "s1"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["std"].startswith("sample") and data["rows"][1]["best_top1"]["values"] == [72, 74]


def test_only_the_final_stage_counts(tmp_path: Path) -> None:
    top1 = [{"student.logits": 90.0}, {"student.logits": 50.0}, {"student.logits": 55.0}]
    write_run(tmp_path / "r", [], top1, stages=["ce_only", "distill", "distill"])
    (row,) = table(find_runs([tmp_path / "r"]))
    assert row["best_top1"]["values"] == [55.0] and row["last_top1"]["values"] == [55.0]


def test_a_run_on_another_dataset_than_the_paper_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {**SPEC, "data": {"dataset": "synthetic"}}
    write_run(tmp_path / "r", ["++data.dataset=synthetic"], curve([10.0]), spec=spec)
    assert main(["report", str(tmp_path / "r")]) == 0
    assert "pair resnet32x4->resnet8x4, these runs on synthetic, 240 epochs; these runs 1" in capsys.readouterr().out


def test_the_published_entry_is_the_pair_the_graph_runs() -> None:
    assert published_entry(SPEC)["pair"] == "resnet32x4->resnet8x4"
    vgg = {**SPEC, "nodes": {"teacher": {"net": "vgg13"}, "student": {"net": "vgg8"}}}
    assert published_entry(vgg)["top1"] == 70.66
    other = {**SPEC, "nodes": {"teacher": {"net": "wrn_40_2"}, "student": {"net": "mobilenetv2"}}}
    assert published_entry(other) is None  # no entry for this pair: nothing to compare with
    one = {**SPEC, "published": PUBLISHED[0]}
    assert published_entry(one)["top1"] == 73.33
    assert published_entry({**SPEC, "published": None}) is None


def test_a_sweep_manifest_names_the_variants(tmp_path: Path) -> None:
    root = tmp_path / "sw"
    write_run(root / "T=2_seed0", ["vars.T=2", "train.seed=0"], curve([70]))
    write_run(root / "T=2_seed1", ["vars.T=2", "train.seed=1"], curve([72]))
    runs = [{"dir": f"T=2_seed{s}", "variant": "T=2", "params": {"vars.T": "2"}, "seed": s} for s in (0, 1, 2)]
    (root / "sweep.json").write_text(json.dumps({"runs": runs}))  # seed2 not started yet
    rows = table(find_runs([root]))
    assert {r["variant"] for r in rows} == {"kd T=2"} and rows[0]["n"] == 2


def test_bad_directories_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run directory" in capsys.readouterr().err
    write_run(tmp_path / "busy", [], curve([50]), finished=False)
    assert main(["report", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path / 'busy'}: no finished run"), err  # the run named first, as every error


def test_plot_draws_a_band_over_seeds(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for seed, student in enumerate([[70, 72], [74, 73], [71, 75]]):
        write_run(tmp_path / "runs" / f"s{seed}", [f"train.seed={seed}"], curve(student))
    assert main(["report", str(tmp_path / "runs"), "--plot", str(tmp_path / "bands.svg")]) == 0
    svg = (tmp_path / "bands.svg").read_text()
    assert svg.count("<path") > 4 and "(n=3)" in svg


def test_a_published_entry_without_a_number_is_no_comparison(tmp_path: Path) -> None:
    spec = {**SPEC, "published": {"top1": None, "source": "ATS (arXiv:2210.04427)", "note": "no number"}}
    write_run(tmp_path / "r" / "s0", ["train.seed=0"], curve([70, 72]), spec=spec)
    (row,) = [r for r in table(find_runs([tmp_path / "r"])) if r["port"] == "student.logits"]
    assert row["published"] is None and row["delta_best"] is None and row["best_top1"]["mean"] == 72
