"""Cycles of ``init: {from: GRAPH.yaml}``: a graph trained from itself, directly or through others.

    problems = from_cycle_problems(spec, read_doc)   # read_doc(path) -> the graph's mapping (extends merged)

Training a dependency trains its own dependencies first; a cycle would recurse forever. Each
``from:`` entry that leads back to a file already on the chain is one problem at its line, naming
the whole cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KDGraphError, Problem

if TYPE_CHECKING:
    from .model import GraphSpec

MAX_CHAIN = 32  # dependency chains deeper than this are refused too


def from_refs(doc: Any) -> Iterator[tuple[tuple, str]]:
    """(YAML path, file) of every ``init: {from: ...}`` in a graph document."""
    if not isinstance(doc, dict):
        return
    nodes = doc.get("nodes")
    for name, node in nodes.items() if isinstance(nodes, dict) else []:
        init = node.get("init") if isinstance(node, dict) else None
        if isinstance(init, dict) and isinstance(init.get("from"), str):
            yield ("nodes", name, "init", "from"), init["from"]
    stages = doc.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        inits = stage.get("init") if isinstance(stage, dict) else None
        for name, init in inits.items() if isinstance(inits, dict) else []:
            if isinstance(init, dict) and isinstance(init.get("from"), str):
                yield ("stages", i, "init", name, "from"), init["from"]


def from_cycle_problems(spec: GraphSpec, read_doc: Callable[[Path], Any]) -> list[Problem]:
    """One problem per ``from:`` of `spec` that starts a cycle (or a chain deeper than MAX_CHAIN)."""
    if spec.source is None:
        return []
    top = spec.source.resolve()
    done: set[Path] = set()  # files whose dependencies are known to end
    problems = []
    for at, rel in from_refs(spec.doc):
        target = (spec.base_dir / rel).resolve()
        chain = _cycle(target, [top], read_doc, done)
        if chain is None:
            continue
        shown = " -> ".join(_short(p, spec.base_dir) for p in chain)
        if chain[0] == chain[-1]:
            message, hint = f"init from cycle: {shown}", "a graph cannot be trained from itself, even through others"
        else:
            message, hint = f"init from chain deeper than {MAX_CHAIN} graphs: {shown}", "shorten the chain"
        problems.append(spec.problem(at, message, hint))
    return problems


def _cycle(file: Path, chain: list[Path], read_doc: Callable[[Path], Any], done: set[Path]) -> list[Path] | None:
    if file in chain:
        return chain[chain.index(file) :] + [file]
    if file in done or not file.is_file():
        return None
    if len(chain) >= MAX_CHAIN:
        return [*chain[:2], Path("..."), file]
    try:
        doc = read_doc(file)
    except KDGraphError:
        return None  # a broken dependency is reported when it is loaded itself
    for _, rel in from_refs(doc):
        found = _cycle((file.parent / rel).resolve(), [*chain, file], read_doc, done)
        if found:
            return found
    done.add(file)
    return None


def _short(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)
