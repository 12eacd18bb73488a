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

from pathlib import Path
from typing import Any

from .errors import Problem, SpecError
from .files import PRESET, read_text
from .yaml12 import parse

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "graphs" / "presets"
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
        preset, _lines, problems = parse(read_text(path, PRESET), str(path))
    except SpecError as e:
        return None, e.problems
    if problems:
        return None, problems
    if not isinstance(preset, dict):
        return None, [_problem(f"preset {path.name} must be a mapping (nets:, data:, train:, ...)")]
    unknown = sorted(set(preset) - set(PRESET_KEYS))
    if unknown:
        what = f"preset {path.name}: unknown key(s) {', '.join(unknown)}"
        return None, [_problem(what, f"use {', '.join(PRESET_KEYS)}")]
    return preset, []


def apply_preset(doc: dict, preset: dict) -> None:
    """Rewrite the graph document in place as the module docstring says."""
    nets = preset.get("nets") or {}
    for node in (doc.get("nodes") or {}).values():
        if isinstance(node, dict) and isinstance(node.get("net"), str) and node["net"] in nets:
            small = dict(nets[node["net"]])
            node["net"] = small.pop("net")
            node.update(small)
    if preset.get("data"):
        data = dict(doc.get("data") or {})
        if "dataset" in preset["data"]:  # another dataset: the old one's statistics and location do not apply
            for key in ("mean", "std", "root", "download"):
                data.pop(key, None)
        doc["data"] = {**data, **preset["data"]}
    if preset.get("train"):
        train = dict(doc.get("train") or {})
        for key, value in preset["train"].items():
            if key == "optimizer" and isinstance(train.get(key), dict):
                train[key] = {**train[key], **value}
            else:
                train[key] = value
        doc["train"] = train
    if preset.get("stage_epochs") is not None:
        for stage in doc.get("stages") or []:
            if isinstance(stage, dict) and "epochs" in stage and stage["epochs"] != 0:
                stage["epochs"] = preset["stage_epochs"]
    declared = doc.get("vars") or {}
    own = ((preset.get("graphs") or {}).get(doc.get("name")) or {}).get("vars") or {}
    for key, value in {**(preset.get("vars") or {}), **own}.items():
        if key in declared:
            declared[key] = value


def apply_named_preset(doc: dict, name: Any, graph_file: str | None) -> list[Problem]:
    """The override `preset=NAME`: find, read and apply the preset; its problems, if any."""
    preset, problems = load_preset(name, graph_file)
    if preset is not None:
        apply_preset(doc, preset)
    return problems
