"""kdgraph sweep and kdgraph report: the grid, resuming a killed sweep, submitit, mean ± std over seeds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdgraph.cli import main
from kdgraph.errors import RunError, SpecError
from kdgraph.sweep import make_sweep, open_sweep, parse_items, split_values

from .conftest import GRAPHS, records

QUICKSTART = str(GRAPHS / "quickstart.yaml")
# digits cut to 64 images: two steps an epoch; the teacher (trained once, cached) sees the same cut
FAST = ["data.subset=64", "train.epochs=3", "train.checkpoint_every=1", "train.progress=false"]


def test_values_split_at_top_level_commas_only() -> None:
    assert split_values("2,4,8") == ["2", "4", "8"]
    assert split_values("[1,2],[3,4]") == ["[1,2]", "[3,4]"]
    assert split_values("{a: 1, b: 2}") == ["{a: 1, b: 2}"]
    assert split_values("'x,y',z") == ["'x,y'", "z"]


def test_items_are_overrides_or_grid_axes() -> None:
    fixed, grid = parse_items(["train.epochs=2", "vars.T=2,4", "train.lr_schedule.milestones=[1,2],[3]", "~x.y"])
    assert fixed == ["train.epochs=2", "~x.y"]
    assert grid == {"vars.T": ["2", "4"], "train.lr_schedule.milestones": ["[1,2]", "[3]"]}
    with pytest.raises(SpecError, match="--seeds"):
        parse_items(["train.seed=1,2"])


def test_the_grid_times_the_seeds_names_every_run() -> None:
    sweep = make_sweep(QUICKSTART, ["train.epochs=2", "vars.T=2,4", "vars.alpha=0.1,0.5"], seeds=2)
    assert [j.dir for j in sweep.jobs][:3] == ["T=2,alpha=0.1_seed0", "T=2,alpha=0.1_seed1", "T=2,alpha=0.5_seed0"]
    assert len(sweep.jobs) == 2 * 2 * 2
    assert sweep.jobs[-1].overrides == ["train.epochs=2", "vars.T=4", "vars.alpha=0.5", "train.seed=1"]
    assert make_sweep(QUICKSTART, [], seeds=3).seeds == [0, 1, 2]  # the graph's seed (0) + i


def test_a_typo_in_the_grid_stops_the_sweep_before_any_run() -> None:
    with pytest.raises(SpecError, match="vars.tau"):
        make_sweep(QUICKSTART, ["vars.tau=2,4"], seeds=1)


def test_a_sweep_directory_is_reopened_extended_or_refused(tmp_path: Path) -> None:
    root = open_sweep(make_sweep(QUICKSTART, ["vars.T=2,4"], seeds=1), tmp_path / "sw")
    again = make_sweep(QUICKSTART, ["vars.T=2,4"], seeds=2)
    open_sweep(again, root)
    assert [j.dir for j in again.jobs] == ["T=2_seed0", "T=2_seed1", "T=4_seed0", "T=4_seed1"]
    with pytest.raises(RunError, match="another sweep"):
        open_sweep(make_sweep(QUICKSTART, ["vars.T=2,8"], seeds=1), root)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        open_sweep(make_sweep(QUICKSTART, [], seeds=1), tmp_path / "other")


def test_each_run_is_started_resumed_or_skipped_from_what_its_folder_holds(tmp_path: Path) -> None:
    (job,) = make_sweep(QUICKSTART, ["train.epochs=2"], seeds=1).jobs
    assert job.state(tmp_path) == "new"
    assert job.argv(tmp_path, "g.yaml") == [
        "run",
        "g.yaml",
        "train.epochs=2",
        "train.seed=0",
        "--out",
        str(tmp_path / "seed0"),
        "--force",
    ]
    (tmp_path / "seed0").mkdir()
    (tmp_path / "seed0" / "run.json").write_text("{}")
    assert job.state(tmp_path) == "partial"
    assert job.argv(tmp_path, "g.yaml") == ["run", "--resume", str(tmp_path / "seed0")]
    (tmp_path / "seed0" / "summary.json").write_text("{}")
    assert job.state(tmp_path) == "done"


def test_a_submitit_job_pickles_without_its_process_and_requeues_itself(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    import pickle

    from kdgraph.cluster import RunJob

    (job,) = make_sweep(QUICKSTART, [], seeds=1).jobs
    runner = RunJob(job, str(tmp_path), QUICKSTART, str(tmp_path))
    runner.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    again = pickle.loads(pickle.dumps(runner))  # what submitit does with it
    assert again.proc is None and again.job == job
    requeued = runner.checkpoint()  # preempted: the run is told to stop, the job comes back as it was
    assert runner.proc.returncode == -signal.SIGTERM
    assert requeued.function.job == job and requeued.function.root == str(tmp_path)


def _sweep_command(out: Path, seeds: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kdgraph",
        "sweep",
        QUICKSTART,
        "--seeds",
        str(seeds),
        *FAST,
        "--out",
        str(out),
        *extra,
    ]


def _expected(run_dir: Path) -> dict[str, tuple[float, float]]:
    """port -> (best, last) top-1, read straight from metrics.jsonl."""
    evals = [r for r in records(run_dir) if r["kind"] == "eval"]
    return {p: (max(r["top1"][p] for r in evals), evals[-1]["top1"][p]) for p in evals[-1]["top1"]}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@pytest.mark.slow
def test_a_killed_sweep_finishes_without_redoing_runs_and_reports_mean_std(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sw"
    proc = subprocess.Popen(
        _sweep_command(out, 3), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = out / "seed1" / "checkpoints" / "latest.json"  # seed1 has begun: kill the sweep and its run
    deadline = time.monotonic() + 600
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "seed0" / "summary.json").exists()
    assert not (out / "seed1" / "summary.json").exists(), "seed1 finished before the kill"
    assert not (out / "seed2").exists()
    seed0 = out / "seed0" / "metrics.jsonl"
    before = (seed0.stat().st_mtime_ns, seed0.read_text())

    assert main(["sweep", QUICKSTART, "--seeds", "3", *FAST, "--out", str(out)]) == 0
    said = capfd.readouterr().out
    assert "seed0: done, skipped" in said
    assert "seed1: resuming" in said and "seed2: starting" in said
    assert (seed0.stat().st_mtime_ns, seed0.read_text()) == before  # the finished run was not touched
    for seed in range(3):
        recs = records(out / f"seed{seed}")
        assert [r["epoch"] for r in recs if r["kind"] == "eval"] == [1, 2, 3]  # nothing twice, nothing lost
        steps = [r["step"] for r in recs if r["kind"] == "train"]
        assert steps == sorted(set(steps))
        assert all(r["peak_memory_mb"] > 0 for r in recs if r["kind"] == "train")

    # the report: best and last top-1 as mean ± sample std over n = 3, recomputed here from metrics.jsonl
    assert main(["report", str(out), "-o", str(tmp_path / "table.json")]) == 0
    rows = {r["port"]: r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert main(["report", str(out)]) == 0
    table = capfd.readouterr().out
    assert "ddof = 1" in table
    runs = [_expected(out / f"seed{s}") for s in range(3)]
    for port in ("teacher.logits", "student.logits"):
        best_mean, best_std = _mean_std([r[port][0] for r in runs])
        last_mean, last_std = _mean_std([r[port][1] for r in runs])
        row = rows[port]
        assert row["n"] == 3 and row["unfinished"] == 0
        assert row["best_top1"]["mean"] == pytest.approx(best_mean)
        assert row["best_top1"]["std"] == pytest.approx(best_std)
        assert row["last_top1"]["mean"] == pytest.approx(last_mean)
        assert row["last_top1"]["std"] == pytest.approx(last_std)
        line = next(line for line in table.splitlines() if f"`{port}`" in line)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == "3"
        assert cells[3] == f"{best_mean:.2f} ± {best_std:.2f}"
        assert cells[4] == f"{last_mean:.2f} ± {last_std:.2f}"

    # a single run is a report too: n = 1, its own values, no std
    assert main(["report", str(out / "seed2"), "--format", "csv"]) == 0
    lines = capfd.readouterr().out.splitlines()
    student = next(line for line in lines if line.startswith("quickstart,student.logits"))
    fields = student.split(",")
    assert fields[2] == "1" and float(fields[4]) == runs[2]["student.logits"][0] and fields[5] == ""


@pytest.mark.slow
def test_the_submitit_launcher_runs_a_two_seed_sweep_through_the_local_executor(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "sub"
    argv = [
        "sweep",
        QUICKSTART,
        "--seeds",
        "2",
        *FAST,
        "--out",
        str(out),
        "--launcher",
        "submitit",
        "--cluster",
        "local",
    ]
    assert main(argv) == 0
    for seed in (0, 1):
        summary = json.loads((out / f"seed{seed}" / "summary.json").read_text())
        assert summary["final"]["top1"]["student.logits"] == _expected(out / f"seed{seed}")["student.logits"][1]
    assert list((out / "submitit").glob("*_result.pkl"))  # the jobs really went through submitit
    assert main(argv) == 0  # again: both are done, nothing is submitted
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 2


@pytest.mark.slow
def test_several_gpus_run_one_run_each_after_the_teacher_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import kdgraph.sweep

    # two "GPUs" on CPU: the children get CUDA_VISIBLE_DEVICES but still run on the CPU (KDGRAPH_CPU)
    monkeypatch.setattr(kdgraph.sweep, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setenv("KDGRAPH_CPU", "1")
    out = tmp_path / "par"
    quick = ["data.subset=64", "train.epochs=1", "train.progress=false"]
    assert main(["sweep", QUICKSTART, "--seeds", "3", *quick, "--out", str(out)]) == 0
    said = capfd.readouterr().out.splitlines()
    started = [line for line in said if "started on GPU" in line]
    # seed0 alone first (it trains the cached teacher), then seed1 and seed2 side by side on GPUs 0 and 1
    assert started[0].startswith("seed0: started on GPU 0")
    assert {line.split(":")[0] for line in started[1:]} == {"seed1", "seed2"}
    assert {line.split("GPU ")[1].split()[0] for line in started[1:]} == {"0", "1"}
    assert said.index(next(line for line in said if line == "seed0: done")) < said.index(started[1])
    for seed in range(3):
        assert (out / f"seed{seed}" / "summary.json").exists()
        assert "done:" in (out / "logs" / f"seed{seed}.log").read_text()


TINY = """\
kdgraph: 1
name: tiny
data: {dataset: synthetic, size: 64, test_size: 16, image_size: 8, channels: 1, classes: 4, batch_size: 8}
nodes:
  student: {net: mlp, hidden: [16]}
edges:
  - {loss: ce, from: data.label, to: student.logits}
train: {epochs: 500, checkpoint_every: 1, log_every: 1, progress: false}
deploy: student.logits
"""


@pytest.mark.slow
def test_a_sigterm_to_the_sweep_reaches_its_run_which_checkpoints(tmp_path: Path) -> None:
    graph = tmp_path / "tiny.yaml"
    graph.write_text(TINY)
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "kdgraph", "sweep", str(graph), "--seeds", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pointer = out / "seed0" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 300
    while not (pointer.exists() and json.loads(pointer.read_text())["step"] >= 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to the sweep alone, not its process group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "run the same command again" in err
    assert not (out / "seed0" / "summary.json").exists() and not (out / "seed1").exists()
    # the run stopped at a step it checkpointed, with every step logged up to it: nothing to redo or lose
    last = [r["step"] for r in records(out / "seed0") if r["kind"] == "train"][-1]
    assert json.loads(pointer.read_text())["step"] == last
