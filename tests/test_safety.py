"""Hostile inputs, each built in a temporary folder: no code runs from data, nothing a user owns is lost,
no input hangs or ends in a traceback.

Every case asserts a clean exit status and one located message; the pickle payloads touch a marker
file if they ever run, and the marker must not exist; foreign files must survive --force; a run
resumed past a damaged checkpoint must end bitwise equal to one never interrupted. The cases that
could hang or blow up run as real processes under kernel limits: 10 s of CPU and 1 GiB of memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdgraph.checkpoint import load_latest
from kdgraph.errors import CheckpointError, DataError
from kdgraph.safe_pickle import UnsafePickleError, loads_data

from .conftest import MLP_RUN, cli

REPO = Path(__file__).resolve().parent.parent
GRAPH = MLP_RUN


class Payload:
    """Unpickling this creates `marker`: what a crafted file would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"__import__('pathlib').Path({self.marker!r}).touch()",))


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Runs compared bitwise use one thread (conftest.one_thread)."""


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(GRAPH)
    return path


def _limits() -> None:
    """In the child: at most 1 GiB of data memory and 10 s of CPU (the kernel enforces both)."""
    resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))


def measured(argv: list[str], cwd: Path) -> tuple[int, str, float]:
    """Exit status, stderr and CPU seconds of `python -m kdgraph ARGV` as a real process under _limits.

    A case that needed more memory would end in MemoryError (a traceback), one that needed more CPU
    would be killed by SIGXCPU: either fails the test.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "KDGRAPH_CPU": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdgraph", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_limits,
    )
    try:
        _, err = proc.communicate(timeout=120)  # wall clock on a shared machine: only a hang gets near it
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"kdgraph {' '.join(argv)} hung")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc.returncode, err.decode(), usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- 1. no code runs from data


def test_cifar_batch_with_a_payload_is_refused(tmp_path: Path) -> None:
    from kdgraph.data import load_dataset
    from kdgraph.spec import DATA_DEFAULTS, merge

    marker = tmp_path / "PWNED"
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        entry = {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1], b"extra": Payload(marker)}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    cfg = merge(DATA_DEFAULTS, {"dataset": "cifar100", "root": str(tmp_path / "data"), "download": False})
    with pytest.raises(DataError, match=r"train is refused: it asks for __builtin__\.eval"):
        load_dataset(cfg, tmp_path, 0)
    assert not marker.exists()


def test_restricted_unpickler_reads_the_real_format_only() -> None:
    """The CIFAR layout at every protocol (Python 2's is protocol 2): exact arrays back; anything else refused."""
    images = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        entry = loads_data(pickle.dumps({b"data": images, b"fine_labels": [3, 7], b"batch_label": b"x"}, protocol))
        assert entry[b"fine_labels"] == [3, 7] and entry[b"data"].tobytes() == images.tobytes()
    for hostile in (np.array([1, "a"], dtype=object), {b"data": os.getcwd}, [Path("x")]):
        with pytest.raises(UnsafePickleError):
            loads_data(pickle.dumps(hostile, protocol=2))


def _run_to_pause(graph: Path, run: Path, steps: int) -> None:
    code, _, err = cli("run", str(graph), "--out", str(run), "--stop-after", str(steps))
    assert code == 0, err


def test_resume_of_a_crafted_checkpoint_runs_nothing(graph: Path, tmp_path: Path) -> None:
    """A payload with a matching hash in latest.json (the same hand wrote both): refused all the same."""
    import hashlib

    run, marker = tmp_path / "run", tmp_path / "PWNED"
    _run_to_pause(graph, run, 3)
    folder = run / "checkpoints"
    blob = pickle.dumps({"position": Payload(marker)}, protocol=2)
    name = f"step-000000003-{hashlib.sha256(blob).hexdigest()[:16]}.pt"
    for old in folder.glob("step-*.pt"):
        old.unlink()
    (folder / name).write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    (folder / "latest.json").write_text(json.dumps({"file": name, "sha256": sha, "bytes": len(blob), "step": 3}))
    code, _, err = cli("run", "--resume", str(run))
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"no intact checkpoint in {folder}")
    assert not marker.exists()


def test_crafted_stage_end_cache_entry_and_export_run_nothing(tmp_path: Path) -> None:
    from kdgraph.export import load_exported
    from kdgraph.safe_load import load_final_graph

    marker = tmp_path / "PWNED"
    torch.save({"graph": {"w": torch.zeros(1)}, "x": Payload(marker)}, tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match=r"refused: it holds a Python object \(eval\)"):
        load_final_graph(tmp_path / "final.pt")  # an init: {from:} cache entry
    with pytest.raises(CheckpointError, match="refused"):
        load_exported(tmp_path / "final.pt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final.pt").write_bytes((tmp_path / "final.pt").read_bytes())
    code, _, err = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "model.pt"))
    assert code == 2 and "refused" in err and "Traceback" not in err
    assert not marker.exists()


def test_crafted_cache_entry_of_a_dependency_runs_nothing(tmp_path: Path) -> None:
    """`init: {from: teacher.yaml}` finds a final.pt planted in the cache under the teacher's key: refused."""
    import hashlib

    from kdgraph.deps import entry_key
    from kdgraph.spec import load_spec

    marker = tmp_path / "PWNED"
    (tmp_path / "teacher.yaml").write_text(GRAPH.replace("name: hostile", "name: teacher"))
    (tmp_path / "student.yaml").write_text(GRAPH.replace("dropout: 0.2}", "dropout: 0.2, init: {from: teacher.yaml}}"))
    teacher = load_spec(tmp_path / "teacher.yaml")
    key = entry_key(teacher)
    entry = tmp_path / "cache" / f"teacher-{key}"
    entry.mkdir(parents=True)
    torch.save({"graph": {"nodes.student.fc.weight": torch.zeros(1)}, "x": Payload(marker)}, entry / "final.pt")
    sha = hashlib.sha256((entry / "final.pt").read_bytes()).hexdigest()  # even with a record that matches it
    (entry / "entry.json").write_text(json.dumps({"format": 1, "key": key, "final": {"sha256": sha}}))
    code, _, err = cli("run", str(tmp_path / "student.yaml"), "--out", str(tmp_path / "run"))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"{tmp_path / 'student.yaml'}:5: nodes.student.init.from: {entry / 'final.pt'}: refused")
    assert not marker.exists()


def test_crafted_stage_end_file_is_refused_on_resume(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    graph = tmp_path / "two.yaml"
    graph.write_text(
        GRAPH.replace("  student: {net: mlp, hidden: [8], dropout: 0.2}", "  student: {net: mlp, hidden: [8]}")
        + "stages:\n  - {name: a, epochs: 1}\n  - {name: b, epochs: 1, init: {student: {stage: a}}}\n"
    )
    run = tmp_path / "run"
    _run_to_pause(graph, run, 6)  # stage a (4 steps) has ended: its end weights are a side file
    side = run / "stage_ends" / "a.pt"
    assert side.exists()
    torch.save({"nodes.student.fc.weight": Payload(marker)}, side)
    code, _, err = cli("run", "--resume", str(run))
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"{side} (start a new run if it is lost): refused: it holds a Python object")
    assert not marker.exists()


# ----------------------------------------------------------------------------- 2. --force deletes only kdgraph's


def test_force_refuses_a_project_folder_with_run_like_names(graph: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "checkpoints").mkdir(parents=True)
    (project / "checkpoints" / "my_model.pth").write_bytes(b"weeks of training")
    (project / "spec.yaml").write_text("mine\n")
    (project / "notes.txt").write_text("keep\n")
    code, _, err = cli("run", str(graph), "--out", str(project), "--force")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"{project} is not a kdgraph run directory (no .kdgraph-run marker); --force will not")
    assert sorted(p.name for p in project.rglob("*")) == ["checkpoints", "my_model.pth", "notes.txt", "spec.yaml"]


def test_force_removes_only_run_files(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("run", str(graph), "--out", str(run), "train.epochs=1")[0] == 0
    marker = json.loads((run / ".kdgraph-run").read_text())
    assert marker["format"] == 1
    (run / "my_analysis.ipynb").write_text("{}")
    (run / "plots").mkdir()
    (run / "plots" / "fig.png").write_bytes(b"png")
    code, _, err = cli("run", str(graph), "--out", str(run), "train.epochs=1", "--force")
    assert code == 0, err
    assert (run / "my_analysis.ipynb").read_text() == "{}" and (run / "plots" / "fig.png").read_bytes() == b"png"
    assert (run / "final.pt").exists() and (run / ".kdgraph-run").exists()


# ----------------------------------------------------------------------------- 3. fallback and the lock


def _uninterrupted(graph: Path, tmp_path: Path) -> dict:
    assert cli("run", str(graph), "--out", str(tmp_path / "reference"))[0] == 0
    return torch.load(tmp_path / "reference" / "final.pt", weights_only=True)["graph"]


def _damage_latest(folder: Path) -> None:
    named = folder / json.loads((folder / "latest.json").read_text())["file"]
    blob = bytearray(named.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    named.write_bytes(bytes(blob))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", ["damaged_latest", "garbage_pointer", "pointer_never_written", "pointer_wrong_types"]
)
def test_resume_falls_back_to_the_newest_intact_checkpoint(graph: Path, tmp_path: Path, damage: str) -> None:
    reference = _uninterrupted(graph, tmp_path)
    run = tmp_path / "run"
    _run_to_pause(graph, run, 5)  # checkpoints at steps 4 (epoch end) and 5 (the pause)
    folder = run / "checkpoints"
    if damage == "damaged_latest":
        _damage_latest(folder)
    elif damage == "garbage_pointer":
        (folder / "latest.json").write_bytes(b"\x00{garbage")
    elif damage == "pointer_never_written":  # a kill between the two renames of a checkpoint
        (folder / "latest.json").unlink()
    else:
        (folder / "latest.json").write_text(json.dumps({"file": ["x"], "sha256": 5}))
    code, out, err = cli("run", "--resume", str(run))
    assert code == 0, err
    assert "resuming from the newest intact checkpoint, step-00000000" in out
    final = torch.load(run / "final.pt", weights_only=True)["graph"]
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))  # no duplicated lines


def test_every_checkpoint_damaged_is_one_line(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run_to_pause(graph, run, 3)
    for path in (run / "checkpoints").glob("step-*.pt"):
        path.write_bytes(b"\x80\x02garbage")
    code, _, err = cli("run", "--resume", str(run))
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("no intact checkpoint in")


def test_second_process_on_a_run_directory_is_refused_at_once(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run_to_pause(graph, run, 3)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (run / "metrics.jsonl").read_text()
        start = time.monotonic()
        code, _, err = cli("run", "--resume", str(run))
        assert code == 2 and time.monotonic() - start < 30
        assert err == (
            f"{run} is in use by another kdgraph process (it holds the run's lock); "
            "wait for it to finish or stop it, or choose another --out\n"
        )
        assert (run / "metrics.jsonl").read_text() == before  # nothing written, nothing duplicated
        code, _, err = cli("run", str(graph), "--out", str(run), "--force")
        assert code == 2 and "in use by another kdgraph process" in err
        assert (run / "metrics.jsonl").read_text() == before  # --force did not empty it under the other process
    finally:
        holder.kill()
        holder.wait()
    assert cli("run", "--resume", str(run))[0] == 0  # the lock died with its process


# ----------------------------------------------------------------------------- 4. the NaN guard guards weights


def test_last_good_checkpoint_is_finite(graph: Path, tmp_path: Path) -> None:
    """gamma 1e20 twice overflows the lr in float32: weights turn infinite before any loss is NaN."""
    run = tmp_path / "run"
    schedule = "train.lr_schedule={type: step, milestones: [1, 2], gamma: 1.0e+20}"
    code, _, err = cli("run", str(graph), "--out", str(run), "train.epochs=3", schedule)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "NaN/Inf" in err and "Last good checkpoint: step " in err
    named = int(err.split("Last good checkpoint: step ")[1].split(",")[0])
    state = load_latest(run / "checkpoints")
    assert state["position"]["step"] == named
    for part in (state["graph"], state["optimizer"]["state"]):
        tensors = [v for v in part.values() if isinstance(v, torch.Tensor)] or [
            t for s in part.values() for t in s.values() if isinstance(t, torch.Tensor)
        ]
        assert tensors and all(torch.isfinite(t).all() for t in tensors)


# ----------------------------------------------------------------------------- 5-8. ranges, bounds, messages


def test_stop_after_has_a_range(graph: Path, tmp_path: Path) -> None:
    from kdgraph.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(["run", str(graph), "--out", str(tmp_path / "run"), "--stop-after", "0"])
    assert exit_.value.code == 2 and "argument --stop-after: 0 is out of range: give 1 to" in err.getvalue()
    assert not (tmp_path / "run").exists()


HOSTILE_FILES = {
    "bomb.yaml": "kdgraph: 1\nname: b\na: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
    "power.yaml": "kdgraph: 1\nname: p\nnodes: {s: {net: cnn}}\ntrain: {epochs: '${10**10**10}'}\n",
    "self.yaml": "kdgraph: 1\nname: s\nnodes:\n  s: {net: cnn, init: {from: self.yaml}}\n"
    "edges: [{loss: ce, from: data.label, to: s.logits}]\n",
}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["validate", "/dev/zero"], "/dev/zero: '/dev/zero' is not a regular file (a device, pipe or socket)"),
        (["validate", "."], ".: '.' is a directory, not a graph file (name a .yaml file)"),
        (["validate", "bomb.yaml"], "bomb.yaml:3: the document expands to more than 100,000 values"),
        (["validate", "power.yaml"], "power.yaml:4: train.epochs: number too large in '${10**10**10}'"),
        (["validate", "power.yaml", "train.epochs=${2**10**10}"], "<command line>: train.epochs: number too large"),
        (["validate", "self.yaml"], "self.yaml:4: nodes.s.init.from: init from cycle: self.yaml -> self.yaml"),
    ],
)
def test_hostile_input_in_a_real_process_is_bounded(tmp_path: Path, argv: list[str], expected: str) -> None:
    for name, text in HOSTILE_FILES.items():
        (tmp_path / name).write_text(text)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    code, err, cpu = measured(argv, tmp_path)
    assert code == 2 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith(expected), err
    assert cpu - (before.ru_utime + before.ru_stime) < 10


def test_resume_reads_only_well_typed_run_files(graph: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _run_to_pause(graph, run, 3)
    good = (run / "run.json").read_text()
    for bad in ('{"source": 5, "overrides": "x"}', "[1, 2]", "\x00"):
        (run / "run.json").write_text(bad)
        code, _, err = cli("run", "--resume", str(run))
        assert code == 2 and len(err.splitlines()) == 1 and "start a new run instead" in err, err
    (run / "run.json").write_text(good)
    (run / "spec.yaml").write_text((run / "spec.yaml").read_text().replace("epochs: 2", "epochs: 5"))
    code, _, err = cli("run", "--resume", str(run))
    assert code == 2 and err.startswith(f"{run / 'spec.yaml'} was edited after the run started")


def test_an_unexpected_error_is_one_line_and_a_traceback_only_with_debug(
    graph: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdgraph.cli

    def broken(_args):
        return {}["missing"]

    monkeypatch.setattr(kdgraph.cli, "cmd_validate", broken)
    code, _, err = cli("validate", str(graph))
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("kdgraph: unexpected KeyError: 'missing' (at tests/test_safety.py") or err.startswith(
        "kdgraph: unexpected KeyError: 'missing' (at test_safety.py"
    )
    assert "--debug" in err and "report it" in err
    with pytest.raises(KeyError):
        cli("--debug", "validate", str(graph))


def test_yaml_12_numbers_and_merge_keys(tmp_path: Path) -> None:
    from kdgraph.spec import load_spec

    (tmp_path / "g.yaml").write_text(
        "kdgraph: 1\nname: g\nnodes:\n  base: &base {net: cnn, width: 2}\n  student: {<<: *base, width: 4}\n"
        "edges:\n  - {loss: ce, from: data.label, to: student.logits}\n"
        "  - {loss: ce, from: data.label, to: base.logits}\n"
        "train: {optimizer: {type: sgd, lr: 1e-3, weight_decay: 5e-4}, lr_schedule: {type: step, gamma: 1e-1}}\n"
    )
    spec = load_spec(tmp_path / "g.yaml", ["train.optimizer.momentum=5e-1"])
    assert spec.nodes["student"].params == {"width": 4} and spec.nodes["base"].params == {"width": 2}
    opt = spec.train["optimizer"]
    assert (opt["lr"], opt["weight_decay"], opt["momentum"]) == (0.001, 0.0005, 0.5)
    assert spec.train["lr_schedule"]["gamma"] == 0.1
    assert spec.locator.where(("nodes", "student", "width"))[1] == 5
