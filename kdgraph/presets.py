"""Presets: one file that turns any graph into a small run of the same topology (`--preset digits`).

    kdgraph run graphs/slkd.yaml --preset digits     # the same as the override `preset=digits` first

A preset is a YAML file ``presets/NAME.yaml`` next to the graph (or in a folder above it), else in
kdgraph's own ``graphs/presets/``; ``--preset path/to/file.yaml`` names one directly. It is applied
to the graph document (after ``extends``, before the other overrides, so they win) as:

* ``nets: {zoo_name: {net: small_name, **params}}``: every node whose ``net`` is a key is given the
  small net and its parameters instead (its ``in``, ``frozen``, ``init``, ``optim``, ``taps`` stay);
* ``data:`` keys replace the graph's ``data:`` keys;
* ``train:`` keys replace the graph's ``train:`` keys, except ``optimizer``, whose keys are merged in;
* ``stage_epochs: N`` sets every stage's own ``epochs`` that is not 0 (a fit-only stage stays 0);
* ``vars:`` values replace those vars the graph declares (recipe knobs: warm-up lengths, widths that a
  feature edge must match); vars the graph does not declare are not added;
* ``graphs: {graph name: {vars: {...}}}``: vars for one graph only, after the general ones (a var name
  that two methods use differently, e.g. SimKD's scalar ``t_channels`` and ReviewKD's list).

Dependencies (``init: {from: ...}``) receive the same preset, so teachers are trained small too and
cached under their own hash.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import Problem, SpecError, did_you_mean
from .files import PRESET, read_text
from .yaml12 import parse

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "graphs" / "presets"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "preset.schema.json"
PRESET_KEYS = ("kdgraph_preset", "title", "nets", "data", "train", "stage_epochs", "vars", "graphs")


def preset_dirs(graph_file: str | None) -> list[Path]:
    """Where `--preset NAME` is looked for: presets/ beside the graph and above it, then the built-in folder."""
    dirs: list[Path] = []
    if graph_file and not graph_file.startswith("<"):
        here = Path(graph_file).resolve().parent
        dirs += [d / "presets" for d in (here, *here.parents)]
    dirs.append(BUILTIN_DIR)
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def available(graph_file: str | None = None) -> list[str]:
    return sorted({p.stem for d in preset_dirs(graph_file) for p in d.glob("*.yaml")})


def find_preset(name: str, graph_file: str | None) -> Path | None:
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        return path if path.exists() else None  # not a regular file: the bounded reader says so
    for d in preset_dirs(graph_file):
        if (d / f"{name}.yaml").exists():
            return d / f"{name}.yaml"
    return None


def _problem(message: str, hint: str | None = None) -> Problem:
    return Problem("preset", message, file="<command line>", hint=hint)


def load_preset(name: Any, graph_file: str | None) -> tuple[dict | None, list[Problem]]:
    if not isinstance(name, str) or not name:
        return None, [_problem("preset=NAME needs a preset name or a .yaml file")]
    path = find_preset(name, graph_file)
    if path is None:
        known = available(graph_file)
        hint = f"known presets: {', '.join(known)}" if known else "add one as graphs/presets/NAME.yaml"
        return None, [_problem(f"no preset {name!r}", hint)]
    try:  # the graph file's reader: bounded, and YAML 1.2 (`cache: off` is the string "off")
        preset, lines, problems = parse(read_text(path, PRESET), str(path))
    except SpecError as e:
        return None, e.problems
    if problems:
        return None, problems
    problems = preset_problems(preset, lines, str(path))
    return (None, problems) if problems else (preset, [])


@lru_cache(maxsize=1)
def preset_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def preset_problems(preset: Any, lines: dict[tuple, int], file: str) -> list[Problem]:
    """Every way ``preset`` departs from schemas/preset.schema.json, each at its file and line.

    The one check a preset passes before ``apply_preset`` touches it: a list, a number where a
    mapping belongs or a net without ``net:`` is a located problem here, never a TypeError there.
    """
    import jsonschema

    if not isinstance(preset, dict):
        return [Problem("", "a preset must be a mapping (nets:, data:, train:, ...)", 1, file, kind="preset")]
    validator = jsonschema.Draft202012Validator(preset_schema())
    errors = sorted(validator.iter_errors(preset), key=lambda e: [str(p) for p in e.absolute_path])
    return [_located(err, lines, file) for err in errors]


_TYPE_NAMES = {"object": "a mapping", "array": "a list", "integer": "an integer", "string": "a string"}


def _located(err: Any, lines: dict[tuple, int], file: str) -> Problem:
    """One schema error as a Problem at the line of the path it is about (or of its nearest parent)."""
    path = tuple(err.absolute_path)
    message, hint = f"{err.instance!r} is not valid here", (err.schema.get("description") or "").rstrip(".") or None
    if err.validator == "additionalProperties":
        known = list(err.schema.get("properties", {}))
        key = sorted(set(err.instance) - set(known), key=str)[0]
        path, message = (*path, key), f"unknown key {key!r}"
        hint = did_you_mean(str(key), known) or "known keys: " + ", ".join(known)
    elif err.validator == "type":
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        message = f"expected {' or '.join(_TYPE_NAMES.get(t, t) for t in wanted)}, not {err.instance!r}"
    elif err.validator == "required":
        message = f"{err.validator_value[0]!r} is required"
    elif err.validator in ("minimum", "minLength", "const"):
        message = f"{err.instance!r}: {err.message}"
    line = next((lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in lines), 1)
    shown = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return Problem(shown, message, line, file, hint, "preset", path)


def apply_preset(doc: dict, preset: dict) -> None:
    """Rewrite the graph document in place as the module docstring says.

    ``preset`` has passed ``preset_problems``; the graph has not been checked yet, so a section of the
    wrong shape (``nodes: [..]``, ``vars: [..]``) is left as it is, for the graph's schema to report at its line.
    """
    nets = preset.get("nets") or {}
    for node in _section(doc, "nodes").values():
        if isinstance(node, dict) and isinstance(node.get("net"), str) and node["net"] in nets:
            small = dict(nets[node["net"]])
            node["net"] = small.pop("net")
            node.update(small)
    if preset.get("data") and isinstance(doc.get("data") or {}, dict):
        data = dict(_section(doc, "data"))
        if "dataset" in preset["data"]:  # another dataset: the old one's statistics and location do not apply
            for key in ("mean", "std", "root", "download"):
                data.pop(key, None)
        doc["data"] = {**data, **preset["data"]}
    if preset.get("train") and isinstance(doc.get("train") or {}, dict):
        train = dict(_section(doc, "train"))
        for key, value in preset["train"].items():
            if key == "optimizer" and isinstance(train.get(key), dict):
                train[key] = {**train[key], **value}
            else:
                train[key] = value
        doc["train"] = train
    stages = doc.get("stages")
    if preset.get("stage_epochs") is not None and isinstance(stages, list):
        for stage in stages:
            if isinstance(stage, dict) and "epochs" in stage and stage["epochs"] != 0:
                stage["epochs"] = preset["stage_epochs"]
    declared = _section(doc, "vars")
    name = doc.get("name")
    own = ((preset.get("graphs") or {}).get(name if isinstance(name, str) else None) or {}).get("vars") or {}
    for key, value in {**(preset.get("vars") or {}), **own}.items():
        if key in declared:
            declared[key] = value


def _section(doc: dict, key: str) -> dict:
    """The graph's mapping ``key``; an empty one (not written back) where it is missing or not a mapping."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def apply_named_preset(doc: dict, name: Any, graph_file: str | None) -> list[Problem]:
    """The override `preset=NAME`: find, read and apply the preset; its problems, if any."""
    preset, problems = load_preset(name, graph_file)
    if preset is not None:
        apply_preset(doc, preset)
    return problems
