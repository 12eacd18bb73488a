"""Typed readers of a run folder's files: what report, draw, plot, sweep and --resume may rely on.

    info = read_run_info(run_dir)            # RunInfo: name, source, overrides, hash, each of its type
    spec = read_run_spec(run_dir)            # RunSpec: the resolved spec.yaml and the fields report uses
    records = read_metrics(run_dir / "metrics.jsonl", within=run_dir)
    manifest = read_sweep_manifest(sweep_dir)

A run folder can be edited, truncated, replaced by garbage or a FIFO, or hold a link out of it. Each
file goes through the bounded reader (files.py, ``within`` its folder), and each field is checked
against the shape kdgraph writes before it is handed out, so a consumer never meets a string where it
sums numbers. A wrong file is one RunError naming the file (and line, where there is one).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunError, SpecError
from .files import METRICS, RUN_FILE, read_json, read_text

MAX_COUNT = 10**12  # epochs and steps: far beyond any run, far below what slows a loop over them

# shapes: "str", "int" (a count >= 0), "number", "number?" (or null), "any", ("list", s), ("map", s), ("obj", {...})
Shape = Any

RUN_JSON: dict[str, Shape] = {"name": "str?", "source": "str?", "overrides": ("list", "str"), "hash": "str?"}
RECORD: dict[str, Shape] = {
    "kind": "str",
    "stage": "str",
    "epoch": "int",
    "step": "int",
    "loss": "number?",
    "losses": ("map", "number?"),
    "lr": ("map", "number?"),
    "top1": ("map", "number"),
    "top5": ("map", "number"),
    "best_top1": ("map", "number"),
    "images_per_s": "number?",
    "peak_memory_mb": "number?",
}
PUBLISHED: dict[str, Shape] = {
    "top1": "number?",
    "top5": "number?",
    "pair": "str",
    "dataset": "str",
    "source": "str",
    "note": "str",
    "epochs": "int",
    "runs": "int",
}
SPEC_FIELDS: dict[str, Shape] = {
    "name": "str",
    "deploy": "str?",
    "data": ("obj", {"dataset": "str"}),
    "nodes": ("map", ("obj", {"net": "str"})),
}
JOB: dict[str, Shape] = {
    "dir": "str",
    "variant": "str",
    "params": ("map", "str"),
    "seed": "int",
    "overrides": ("list", "str"),
}
SWEEP: dict[str, Shape] = {
    "graph": "str",
    "name": "str",
    "overrides": ("list", "str"),
    "grid": ("map", ("list", "str")),
    "seeds": ("list", "int"),
    "runs": ("list", ("obj", JOB)),
}
REQUIRED_SWEEP = ("graph", "name", "overrides", "grid", "seeds", "runs")


_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def _type_name(value: Any) -> str:
    """'a string', 'an integer', 'null': what a JSON or YAML value is, in a reader's words."""
    return "null" if value is None else _NAMES.get(type(value), f"a {type(value).__name__}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def mismatch(value: Any, shape: Shape, where: str = "") -> tuple[str, str] | None:
    """(dotted place, what is wrong) of the first part of `value` that does not have `shape`; None if it fits."""
    if isinstance(shape, str):
        if shape.endswith("?"):
            return None if value is None else mismatch(value, shape[:-1], where)
        if shape == "any":
            return None
        if shape == "str" and not isinstance(value, str):
            return where, f"is {_type_name(value)}, not a string"
        if shape == "number" and not _is_number(value):
            return where, f"is {_type_name(value)}, not a number"
        if shape == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                return where, f"is {_type_name(value)}, not an integer"
            if not 0 <= value <= MAX_COUNT:
                return where, f"is {value}, outside 0..{MAX_COUNT:,}"
        return None
    kind, inner = shape
    if kind == "list":
        if not isinstance(value, list):
            return where, f"is {_type_name(value)}, not a list"
        return next((m for i, v in enumerate(value) if (m := mismatch(v, inner, f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return where, f"is {_type_name(value)}, not a mapping"
    if kind == "map":
        for k, v in value.items():
            m = mismatch(v, inner, f"{where}.{k}" if where else str(k))
            if m:
                return m
        return None
    for k, sub in inner.items():  # "obj": the named fields, when present; others pass unread
        if k in value:
            m = mismatch(value[k], sub, f"{where}.{k}" if where else k)
            if m:
                return m
    return None


def _refuse(path: Path, place: str, problem: str, line: int | None = None, fix: str = "") -> RunError:
    where = f"{path}:{line}" if line is not None else str(path)
    subject = f"{place!r} " if place else ""
    return RunError(f"{where}: {subject}{problem}; not a file kdgraph wrote{fix}")


def _json_mapping(path: Path, within: Path, fix: str) -> dict[str, Any]:
    """A run file's JSON object, read bounded within its folder; RunError naming the file otherwise."""
    try:
        data = read_json(path, RUN_FILE, within=within)
    except RunError as e:
        raise RunError(f"{e}{fix}") from None
    if not isinstance(data, dict):
        raise _refuse(path, "", f"the file is {_type_name(data)}, not a mapping", fix=fix)
    return data


# ----------------------------------------------------------------------------- run.json


@dataclass(frozen=True)
class RunInfo:
    """The fields of run.json that kdgraph reads back."""

    path: Path
    name: str | None = None
    source: str | None = None
    overrides: list[str] = field(default_factory=list)
    hash: str | None = None


def read_run_info(run_dir: Path, fix: str = "", missing_ok: bool = False) -> RunInfo:
    """run.json of `run_dir`, its fields typed; RunError naming the file otherwise (`fix` is appended).

    With `missing_ok`, a folder without run.json (a sweep's run not started yet) has an empty RunInfo.
    """
    path = run_dir / "run.json"
    if missing_ok and not path.exists() and not path.is_symlink():
        return RunInfo(path)
    info = _json_mapping(path, run_dir, fix)
    bad = mismatch(info, ("obj", RUN_JSON))
    if bad:
        raise _refuse(path, *bad, fix=fix)
    return RunInfo(path, info.get("name"), info.get("source"), list(info.get("overrides") or []), info.get("hash"))


# ----------------------------------------------------------------------------- spec.yaml


@dataclass(frozen=True)
class RunSpec:
    """The resolved spec.yaml a run trained: the document, and the fields report reads, typed."""

    path: Path
    doc: dict[str, Any]
    lines: dict[tuple, int]
    published: list[dict[str, Any]]  # each entry checked against PUBLISHED


def read_run_spec(run_dir: Path) -> RunSpec | None:
    """spec.yaml of `run_dir` (None when there is none); RunError naming file and line when it is malformed."""
    from . import yaml12

    path = run_dir / "spec.yaml"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        doc, lines, _ = yaml12.parse(read_text(path, RUN_FILE, within=run_dir), str(path))
    except SpecError as e:  # not YAML, or beyond yaml12's bounds: its line names the file and line
        raise RunError(f"{e.lines()[0]}; not a file kdgraph wrote") from None
    if doc is None or doc == {}:  # kdgraph never writes an empty spec: a truncated or emptied copy
        raise _refuse(path, "", "the file is empty")
    if not isinstance(doc, dict):
        raise _refuse(path, "", f"the file is {_type_name(doc)}, not a mapping")

    def line_of(place: str) -> int | None:
        parts = tuple(int(p) if p.isdigit() else p for p in place.replace("[", ".").replace("]", "").split("."))
        for n in range(len(parts), 0, -1):
            if parts[:n] in lines:
                return lines[parts[:n]]
        return None

    bad = mismatch(doc, ("obj", SPEC_FIELDS))
    if bad:
        raise _refuse(path, *bad, line=line_of(bad[0]))
    raw = doc.get("published")
    entries = [] if raw is None else raw if isinstance(raw, list) else [raw]
    for i, entry in enumerate(entries):
        place = f"published[{i}]" if isinstance(raw, list) else "published"
        bad = mismatch(entry, ("obj", PUBLISHED), place)
        if bad:
            raise _refuse(path, *bad, line=line_of(bad[0]))
        if isinstance(entry.get("top1"), float) and not math.isfinite(entry["top1"]):
            raise _refuse(path, f"{place}.top1", "is not a finite number", line=line_of(place))
    return RunSpec(path, doc, lines, entries)


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(path: Path, within: Path | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, each field of the type kdgraph writes.

    Only a last line without its newline is skipped (a run killed mid-write leaves one); any other line
    that is not a well-typed JSON record is a RunError naming the file and line.
    """
    text = read_text(path, METRICS, within=within if within is not None else path.parent)
    lines = text.split("\n")
    lines.pop()  # after the last "\n": empty, or a line cut by a kill
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            problem = f"the line is not JSON ({getattr(e, 'msg', type(e).__name__)})"
            raise _refuse(path, "", problem, number, "; remove the line or start a new run") from None
        if not isinstance(record, dict):
            raise _refuse(path, "", f"the line is {_type_name(record)}, not a record", number)
        bad = mismatch(record, ("obj", RECORD))
        if bad:
            raise _refuse(path, *bad, line=number)
        records.append(record)
    return records


# ----------------------------------------------------------------------------- sweep.json


def read_sweep_manifest(
    root: Path, fix: str = "", required: tuple[str, ...] = REQUIRED_SWEEP, job_required: tuple[str, ...] = tuple(JOB)
) -> dict[str, Any]:
    """sweep.json of `root`, the `required` fields there, every field typed, every run folder a name inside `root`."""
    path = root / "sweep.json"
    data = _json_mapping(path, root, fix)
    missing = [k for k in required if k not in data]
    if missing:
        raise _refuse(path, missing[0], "is missing", fix=fix)
    bad = mismatch(data, ("obj", SWEEP))
    if bad:
        raise _refuse(path, *bad, fix=fix)
    for i, run in enumerate(data.get("runs") or []):
        absent = [k for k in job_required if k not in run]
        if absent:
            raise _refuse(path, f"runs[{i}].{absent[0]}", "is missing", fix=fix)
        name = run["dir"]
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise _refuse(path, f"runs[{i}].dir", f"{name!r} is not a folder name inside the sweep", fix=fix)
    return data
