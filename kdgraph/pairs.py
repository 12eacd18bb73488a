"""Teacher-student pairs: a graph file's `pairs:` table, one switch (`--pair NAME`) away.

    pairs:
      vgg13-vgg8:
        nodes: {teacher: {net: vgg13, init: {from: teachers/vgg13.yaml}}, student: {net: vgg8}}
        vars: {beta: 6.0}
        overrides: ["edges[1].from=teacher.feat4"]          # anything else, in command-line syntax
        published: {top1: 74.68, source: "DKD (arXiv:2203.08679), Table 1"}

A pair is nothing but overrides: ``expand_pair`` turns the entry into ``++nodes.<node>.<key>=...`` (a
node's settings are replaced key by key), ``vars.<name>=...`` (strict: the var must exist),
the entry's own ``overrides`` and ``++published=...`` (without one, the file's own numbers measured on
the pair's nets, or none); the command line's overrides come after
them, so they win. The expanded list is what a run records, so ``--resume`` needs no table.
The table itself is checked by the JSON Schema on every load and is not part of the spec's hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import Problem, SpecError, did_you_mean, sort_problems
from .spec import Locator, load_document
from .spec.schema import schema_problems


def pair_table(path: str | Path) -> tuple[dict[str, dict], Locator]:
    """The `pairs:` mapping of a graph file (after `extends`), and where each of its keys was written.

    The table is checked against the graph schema's ``pairs`` before any entry is read, so a list
    where a mapping belongs is a located problem (file:line), never an AttributeError further on.
    """
    problems: list[Problem] = []
    locator = Locator(default_file=str(path))
    doc = load_document(path, problems, locator)
    if problems:
        raise SpecError(problems)
    table = doc.get("pairs") or {}
    if not isinstance(table, dict):
        raise SpecError(locator.problem(("pairs",), "must be a mapping of pair names to entries"))
    bad = [p for p in schema_problems({"pairs": table}, locator) if p.where[:1] == ("pairs",)]
    if bad:
        raise SpecError(sort_problems(bad))
    return {name: entry or {} for name, entry in table.items()}, locator


def _value(v: Any) -> str:
    return json.dumps(v)  # JSON is YAML: the override parser reads it back unchanged


def expand_pair(path: str | Path, name: str) -> list[str]:
    """The overrides that select pair ``name`` of the graph file at ``path``."""
    table, locator = pair_table(path)
    if name not in table:
        known = sorted(table)
        hint = did_you_mean(name, known) or (
            f"pairs here: {', '.join(known)}" if known else "this file has no `pairs:` table"
        )
        file, line = locator.where(("pairs",))
        raise SpecError(Problem("pairs", f"no pair {name!r} (--pair)", line, file, hint))
    entry = table[name] or {}
    doc = load_document(path, [], Locator())
    doc_nodes = _mapping(doc.get("nodes"))
    out: list[str] = []
    for node, fields in (entry.get("nodes") or {}).items():
        if node not in doc_nodes:
            raise SpecError(
                locator.problem(
                    ("pairs", name, "nodes", node),
                    f"no node {node!r} in this graph",
                    did_you_mean(node, list(doc_nodes)),
                )
            )
        out += [f"++nodes.{node}.{key}={_value(value)}" for key, value in (fields or {}).items()]
    out += [f"vars.{key}={_value(value)}" for key, value in (entry.get("vars") or {}).items()]
    out += list(entry.get("overrides") or [])
    if entry.get("published"):
        out.append(f"++published={_value(_with_pair(entry['published'], entry, doc_nodes))}")
    elif doc.get("published"):  # the file's own numbers, only those measured on this pair's nets
        mine = [p for p in _as_list(doc["published"]) if p.get("pair") == "->".join(pair_nets(entry, doc_nodes))]
        out.append(f"++published={_value(mine if len(mine) > 1 else mine[0])}" if mine else "~published")
    return out


def _as_list(published: Any) -> list[dict]:
    return [p for p in (published if isinstance(published, list) else [published]) if isinstance(p, dict)]


def _with_pair(published: Any, entry: dict, doc_nodes: dict) -> Any:
    """Fill in `pair: teacher->student` from the pair's nets when the entry does not say it."""
    if isinstance(published, list):
        return [_with_pair(p, entry, doc_nodes) for p in published]
    if not isinstance(published, dict) or "pair" in published:
        return published
    nets = pair_nets(entry, doc_nodes)
    return {**published, "pair": "->".join(nets)} if nets else published


def pair_nets(entry: dict, doc_nodes: dict) -> list[str]:
    """[teacher net, student net] of a pair (the file's own nets where the pair keeps them)."""
    nets = []
    for node in ("teacher", "student"):
        net = ((entry.get("nodes") or {}).get(node) or {}).get("net") or _mapping(doc_nodes.get(node)).get("net")
        if net:
            nets.append(str(net))
    return nets


def _mapping(value: Any) -> dict:
    """The graph's own mapping, or an empty one: the graph is not checked yet (its schema reports a list there)."""
    return value if isinstance(value, dict) else {}


def with_pair(files: list[str], overrides: list[str], pair: str | None) -> list[str]:
    """The overrides of a command: the pair's first (when --pair is given), then the command line's."""
    if not pair:
        return overrides
    if len(files) != 1:
        raise SpecError("--pair takes exactly one graph file")
    return expand_pair(files[0], pair) + overrides


def pair_rows(path: str | Path) -> list[dict[str, str]]:
    """One row per pair: name, teacher, student, vars, published top-1 and its source (`kdgraph list pairs`)."""
    table, _ = pair_table(path)
    doc_nodes = _mapping(load_document(path, [], Locator()).get("nodes"))
    rows = []
    for name, entry in table.items():
        entry = entry or {}
        nets = pair_nets(entry, doc_nodes) + ["?", "?"]
        published = entry.get("published") or {}
        first = published[0] if isinstance(published, list) and published else published
        rows.append(
            {
                "pair": name,
                "teacher": nets[0],
                "student": nets[1],
                "vars": ", ".join(f"{k}={v}" for k, v in (entry.get("vars") or {}).items()) or "-",
                "top1": f"{first['top1']:.2f}" if isinstance(first, dict) and "top1" in first else "n/r",
                "source": str(first.get("source", "")) if isinstance(first, dict) else "",
            }
        )
    return rows


def format_rows(rows: list[dict[str, str]]) -> str:
    """Rows as an aligned text table."""
    if not rows:
        return "no pairs"
    keys = list(rows[0])
    width = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(width[k]) for k in keys).rstrip()]
    lines += ["  ".join(r[k].ljust(width[k]) for k in keys).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def describe_pair(spec: Any, name: str) -> str:
    """One line for `kdgraph plan --pair`: the pair's nets as built, the vars it sets (final values), its number."""
    table, _ = pair_table(spec.source)
    entry = table.get(name) or {}
    nets = [f"{n} {spec.nodes[n].type}" for n in (entry.get("nodes") or {}) if n in spec.nodes]
    values = spec.doc.get("vars") or {}
    set_vars = ", ".join(f"{k}={values.get(k, v)}" for k, v in (entry.get("vars") or {}).items())
    published = spec.doc.get("published") or {}
    first = published[0] if isinstance(published, list) and published else published
    has = isinstance(first, dict) and "top1" in first
    number = f"; published {first['top1']:.2f} ({first.get('source', '')})" if has else "; published n/r"
    shown = f"; vars {set_vars}" if set_vars else ""
    return f"pair {name}: {', '.join(nets) or 'nets as in the file'}{shown}{number}"
