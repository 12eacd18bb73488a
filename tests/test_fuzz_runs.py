"""Fuzzing the readers of run folders through the CLI: report, draw, export, eval, plot and --resume.

A finished run of the tiny synthetic graph is made once; each example copies it and damages one of
its files the way a disk, a hand or an adversary would: a FIFO, a directory or a symlink out of the
folder in its place, truncated, zeroed or random bytes, JSON values of the wrong type, NaN, huge or
nested 10^5 deep, metrics lines that are not JSON, a spec with hostile YAML, a run.json or spec.yaml
naming a plugin file that writes a marker when imported. The command must end in exit 0 or exit 2
naming the run or the file, within the time bound, and leave the sentinel folder (a user's files, a
checkpoints/ folder the run may link to) exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ._fuzz import assert_clean, changed, fuzz_settings, make_sentinel, run_cli, snapshot
from .conftest import KD_CNN

pytestmark = pytest.mark.fuzz
RUN_FILES = [
    "run.json",
    "spec.yaml",
    "metrics.jsonl",
    "summary.json",
    "final.pt",
    ".kdgraph-run",
    "checkpoints/latest.json",
    "checkpoints",
    "CKPT",
]  # CKPT: the newest step-*.pt
COMMANDS = {
    "report": ["report", "RUN"],
    "report_json": ["report", "RUN", "--format", "json"],
    "draw": ["draw", "RUN", "--format", "dot"],
    "export": ["export", "RUN", "-o", "RUN/model.pt", "--no-torchscript"],
    "eval": ["eval", "RUN"],
    "resume": ["run", "--resume", "RUN", "-q"],
}
PLUGIN = "from pathlib import Path\nPath(__file__).with_suffix('.RAN').write_text('imported')\n"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run (one epoch of the tiny graph), a sentinel folder with a plugin file, a cache."""
    root = tmp_path_factory.mktemp("fuzz_runs")
    (root / "work").mkdir()
    (root / "cache").mkdir()
    (root / "work" / "tiny.yaml").write_text(KD_CNN)
    sentinel = make_sentinel(root / "sentinel")
    (sentinel / "evil.py").write_text(PLUGIN)
    made = run_cli(["run", "tiny.yaml", "--out", "base", "-q", "train.epochs=1"], root / "work", _env(root), 120)
    assert made.code == 0, made.describe()
    return root


def _env(root: Path) -> dict[str, str]:
    return {"KDGRAPH_CACHE": str(root / "cache"), "KDGRAPH_DATA": str(root / "work" / "data")}


def json_values(sentinel: Path) -> st.SearchStrategy[str]:
    """JSON text of a hostile value (Python's json reads NaN and Infinity)."""
    return st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "1e999",
            "9" * 5000,
            "-1",
            "0",
            "null",
            "true",
            '""',
            '"x"',
            "[]",
            "{}",
            "[1, 2]",
            '{"a": 1}',
            "[" * 100_000 + "]" * 100_000,
            '"../../../etc/passwd"',
            json.dumps(str(sentinel)),
            json.dumps(str(sentinel / "evil.py")),
            json.dumps([str(sentinel / "evil.py")]),
            '"/dev/zero"',
            '"\\u0000"',
            '"' + "x" * 200_000 + '"',
        ]
    )


def _damage_bytes(path: Path, data: st.DataObject) -> None:
    blob = path.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "zero", "empty", "random", "flip", "append"]), label="bytes")
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, max(len(blob) - 1, 0)), label="keep")]
    elif how == "zero":
        blob = bytes(len(blob))
    elif how == "empty":
        blob = b""
    elif how == "random":
        blob = data.draw(st.binary(min_size=1, max_size=512), label="random")
    elif how == "flip" and blob:
        i = data.draw(st.integers(0, len(blob) - 1), label="flip at")
        blob = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1 :]
    else:
        blob += data.draw(st.binary(min_size=1, max_size=64), label="tail")
    path.write_bytes(blob)


def _damage_json(path: Path, data: st.DataObject, sentinel: Path) -> None:
    """One key of a JSON object (or one line of metrics.jsonl) set to a hostile value, removed, or the text broken."""
    lines = path.read_text().splitlines() or ["{}"]
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    try:
        record = json.loads("\n".join(lines) if path.suffix == ".json" or path.name == ".kdgraph-run" else lines[i])
    except ValueError:
        record = {}
    how = data.draw(st.sampled_from(["set", "delete", "garbage", "whole"]), label="json")
    if how == "garbage":
        text = data.draw(st.sampled_from(["{", "not json", '{"a": NaN', "\x00", "[1, 2]", "null", "1e999"]))
    elif how == "whole":
        text = data.draw(json_values(sentinel), label="whole value")
    else:
        keys = list(record) if isinstance(record, dict) else []
        key = data.draw(st.sampled_from(keys + ["plugins", "source", "step", "file", "hash", "kind", "zzz"]))
        text = json.dumps({k: v for k, v in record.items() if k != key} if isinstance(record, dict) else {})
        if how == "set":
            value = data.draw(json_values(sentinel), label="value")
            text = text[:-1] + (", " if len(text) > 2 else "") + json.dumps(key) + ": " + value + "}"
    if path.suffix == ".jsonl":
        lines[i] = text.replace("\n", " ")
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(text)


def _regular(path: Path) -> bool:
    """A plain file of the run's own (not a FIFO, a folder or a link an earlier damage left)."""
    return path.is_file() and not path.is_symlink()


def _damage(run: Path, target: str, data: st.DataObject, sentinel: Path) -> None:
    steps = sorted((run / "checkpoints").glob("step-*.pt")) if (run / "checkpoints").is_dir() else []
    path = run / target if target != "CKPT" else (steps[-1] if steps else run / "checkpoints" / "step-0.pt")
    if run.resolve() not in path.parent.resolve().parents and path.parent.resolve() != run.resolve():
        return  # an earlier damage linked checkpoints/ out of the run: the fuzzer must not write there itself
    how = data.draw(
        st.sampled_from(["fifo", "directory", "link_out", "link_dev", "missing", "bytes", "content"]), label="how"
    )
    if how in ("content", "bytes") and not _regular(path):
        how = "missing"
    if how == "content" and path.suffix in (".json", ".jsonl", "") and path.name != "checkpoints":
        _damage_json(path, data, sentinel)
        return
    if how == "content" and path.suffix == ".yaml":
        from .test_fuzz_graphs import hostile_tokens, with_hostile_values

        path.write_text(with_hostile_values(path.read_text(), data, hostile_tokens(sentinel)))
        return
    if how == "bytes":
        _damage_bytes(path, data)
        return
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "link_out":
        outside = sentinel / (
            "checkpoints"
            if target == "checkpoints"
            else data.draw(
                st.sampled_from(["notes.txt", "run.json", "final.pt", "evil.py", "checkpoints/mine.pt"]), label="to"
            )
        )
        path.symlink_to(outside)
    elif how == "link_dev":
        path.symlink_to("/dev/zero" if target != "checkpoints" else "/dev")


@fuzz_settings(25)
@given(data=st.data())
def test_damaged_run_folders(ws: Path, data: st.DataObject) -> None:
    run = ws / "work" / "fuzzed_run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(ws / "work" / "base", run, symlinks=True)
    for _ in range(data.draw(st.integers(1, 2), label="files")):
        target = data.draw(st.sampled_from(RUN_FILES), label="file")
        _damage(run, target, data, ws / "sentinel")
    if data.draw(st.integers(0, 5), label="plugins") == 0:  # a run naming code: never imported from the run
        if _regular(run / "run.json"):
            try:
                info = json.loads((run / "run.json").read_text())
            except ValueError:
                info = None
            if isinstance(info, dict):
                info["plugins"] = [str(ws / "sentinel" / "evil.py")]
                (run / "run.json").write_text(json.dumps(info))
        if _regular(run / "spec.yaml"):
            with (run / "spec.yaml").open("a") as fh:
                fh.write(f"\nplugins: [{ws / 'sentinel' / 'evil.py'}]\n")
    command = data.draw(st.sampled_from(sorted(COMMANDS)), label="command")
    argv = [a.replace("RUN", "fuzzed_run") for a in COMMANDS[command]]
    before = snapshot(ws / "sentinel")
    outcome = run_cli(argv, ws / "work", _env(ws))
    assert_clean(outcome, names=("fuzzed_run",))
    touched = changed(before, snapshot(ws / "sentinel"))
    assert not touched, f"{argv} changed files outside the run folder: {touched}\n{outcome.describe()}"
