"""The graph document: YAML read with every path's line, the Locator, overrides, the resolved dump.

A path inside the document is a tuple: ("nodes", "student", "net") or ("edges", 2, "to").
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .. import yaml12
from ..errors import Problem, SpecError, did_you_mean
from ..presets import apply_named_preset
from .defaults import DATA_DEFAULTS, TRAIN_DEFAULTS

if TYPE_CHECKING:
    from .model import GraphSpec


Path_ = tuple  # a path inside the document: ("nodes", "student", "net") or ("edges", 2, "to")


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Locator:
    """Where each path of the document came from: (file, line), or an override on the command line."""

    origins: dict[Path_, tuple[str, int | None]] = field(default_factory=dict)
    default_file: str = "<graph>"

    def where(self, path: Path_) -> tuple[str, int | None]:
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in self.origins:
                return self.origins[tuple(path[:n])]
        return self.default_file, None

    def problem(self, path: Path_, message: str, hint: str | None = None, kind: str = "spec") -> Problem:
        file, line = self.where(path)
        return Problem(format_path(path), message, line, file, hint, kind, tuple(path))


def read_yaml(path: Path, locator: Locator, problems: list[Problem]) -> Any:
    """Parse one YAML file (see yaml12: 1.2 numbers, merge keys, bounded), recording each path's line."""
    data, lines, found = yaml12.parse(yaml12.read_graph_text(path), str(path))
    locator.origins.update({p: (str(path), line) for p, line in lines.items()})
    problems += found
    return data


def parse_override_key(key: str) -> Path_:
    """'edges[2].weight' or 'edges.2.weight' -> ('edges', 2, 'weight')."""
    parts: list[Any] = []
    for token in re.split(r"\.|\[|\]", key):
        if token == "":
            continue
        parts.append(int(token) if re.fullmatch(r"-?\d+", token) else token)
    return tuple(parts)


def apply_overrides(doc: dict, overrides: list[str], locator: Locator) -> list[Problem]:
    """Apply `key=value`, `+key=value` (add), `++key=value` (add or replace) and `~key` (remove), in order."""
    problems: list[Problem] = []
    for text in overrides:
        origin = ("<command line>", None)
        where = f"override {text!r}"
        mode = "set"
        body = text
        if text.startswith("++"):
            mode, body = "force", text[2:]
        elif text.startswith("+"):
            mode, body = "add", text[1:]
        elif text.startswith("~"):
            mode, body = "remove", text[1:]
        if mode == "remove":
            key, raw = body, None
        elif "=" not in body:
            problems.append(
                Problem(
                    "",
                    f"{where} has no '='",
                    file="<command line>",
                    kind="override",
                    hint="write key=value, +key=value or ~key",
                )
            )
            continue
        else:
            key, raw = body.split("=", 1)
        path = parse_override_key(key.strip())
        if not path:
            problems.append(Problem("", f"{where} names no key", file="<command line>", kind="override"))
            continue
        if len(path) > yaml12.MAX_DEPTH:  # `++a.a.a...=1` would nest the document past the reader's bound
            problems.append(_override_problem((), f"{where} is deeper than {yaml12.MAX_DEPTH} levels"))
            continue
        try:
            value = yaml12.parse_value(raw) if raw is not None else None
        except (yaml.YAMLError, SpecError):
            problems.append(_override_problem(path, f"{where}: value is not valid YAML", "quote it"))
            continue
        if path == ("preset",) and mode == "set":  # `--preset NAME`: a whole small-run rewrite, see presets.py
            problems += apply_named_preset(doc, value, locator.default_file)
            continue
        bad_index = _index_problem(doc, path, mode, where)
        if bad_index is not None:
            problems.append(bad_index)
            continue
        parent: Any = doc
        ok = True
        for i, part in enumerate(path[:-1]):
            child = _child(parent, part)
            if child is _MISSING and (mode == "force" or _has_default(path[: i + 1])) and isinstance(parent, dict):
                child = parent[part] = {}  # ++ creates the mappings on its way
            if child is _MISSING:
                hint = _key_hint(parent, part)
                problems.append(_override_problem(path[: i + 1], f"{where}: no such key", hint))
                ok = False
                break
            parent = child
        if not ok:
            continue
        last = path[-1]
        exists = _child(parent, last) is not _MISSING
        if mode == "set" and not exists and _has_default(path):
            mode = "add"  # a setting with a default exists even when the file does not write it
        if mode == "set" and not exists:
            known = list(parent) if isinstance(parent, dict) else []
            known += list(_defaults_at(path[:-1]))
            hint = (did_you_mean(str(last), sorted({str(k) for k in known})) if known else _key_hint(parent, last)) or (
                f"use +{key}=... to add a new key"
            )
            problems.append(_override_problem(path, f"{where}: no such key", hint))
            continue
        if mode == "add" and exists:
            problems.append(_override_problem(path, f"{where}: key already exists", f"use {key}=... to change it"))
            continue
        if mode == "remove" and not exists:
            problems.append(_override_problem(path, f"{where}: no such key to remove", _key_hint(parent, last)))
            continue
        if mode == "remove":
            del parent[last]
            continue
        if path == ("data", "root") and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            value = str(Path.cwd() / value)  # a path typed on the command line is relative to where it was typed
        if isinstance(parent, list):
            if last == len(parent):
                parent.append(value)
            else:
                parent[last] = value
        elif isinstance(parent, dict):
            parent[last] = value
        else:
            problems.append(_override_problem(path[:-1], f"{where}: not a mapping or list"))
            continue
        for p in [p for p in locator.origins if p[: len(path)] == path]:
            del locator.origins[p]
        locator.origins[path] = origin
    return problems


_MISSING = object()


def _defaults_at(path: Path_) -> dict:
    node: Any = {"train": TRAIN_DEFAULTS, "data": DATA_DEFAULTS}
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _has_default(path: Path_) -> bool:
    """`train.limit_batches`, `data.subset`, `train.optimizer.nesterov`: keys with a built-in default."""
    node: Any = {"train": TRAIN_DEFAULTS, "data": DATA_DEFAULTS}
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _child(parent: Any, part: Any) -> Any:
    if isinstance(parent, dict):
        return parent.get(part, _MISSING)
    if isinstance(parent, list) and isinstance(part, int):
        return parent[part] if -len(parent) <= part < len(parent) else _MISSING
    return _MISSING


def _index_problem(doc: dict, path: Path_, mode: str, where: str) -> Problem | None:
    """An index of ``path`` that is negative or beyond its list (appending at the end is +/++ only)."""
    node: Any = doc
    for i, part in enumerate(path):
        if isinstance(node, list) and isinstance(part, int):
            appends = i == len(path) - 1 and mode in ("add", "force") and part == len(node)
            if part < 0 or (part >= len(node) and not appends):
                what = f"index {part} is negative" if part < 0 else "no such key"  # the latter: tests/bad_graphs/36
                return _override_problem(path[: i + 1], f"{where}: {what}", _key_hint(node, part))
        node = _child(node, part)
        if node is _MISSING:
            return None  # a missing key: the walk below says which
    return None


def _key_hint(parent: Any, part: Any) -> str | None:
    if isinstance(parent, dict):
        return did_you_mean(str(part), [str(k) for k in parent])
    if isinstance(parent, list) and not parent:
        return "the list is empty; +key appends at index 0"
    if isinstance(parent, list):
        return f"the list has {len(parent)} items, indices 0..{len(parent) - 1}; +key appends at index {len(parent)}"
    return None


def merge(base: dict, top: dict) -> dict:
    """Deep-merge `top` over `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def dump_resolved(spec: GraphSpec) -> str:
    """The resolved document as YAML (what `validate --resolved` prints and a run directory keeps).

    Its `data:` shows every loader setting with its default (drop_last, workers, ...); the synthetic
    dataset's own keys only for the synthetic dataset, unset ones (None) not at all.
    """
    synthetic_only = {"size", "test_size", "channels", "classes"} if spec.data.get("dataset") != "synthetic" else set()
    data = {k: v for k, v in spec.data.items() if k not in synthetic_only and v is not None}  # None: unset
    doc = {k: (data if k == "data" else v) for k, v in spec.doc.items()}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=110)


def _override_problem(path: Path_, message: str, hint: str | None = None) -> Problem:
    """A problem of a command-line override at `path` (no line: it is not in the file)."""
    return Problem(format_path(path), message, file="<command line>", kind="override", where=tuple(path), hint=hint)
