"""Every `init:` checked against the node it fills, before anything trains (validate and run do it).

    problems = init_problems(spec, graph)      # graph: check_graph's built (and dry-run) DistillGraph

* ``checkpoint``: the file is read and loaded into a copy of the node, exactly as the run will;
* ``from``: the dependency graph is loaded with the overrides the run will give it and built on the
  meta device (no memory, no training, no cache needed), and its node's keys and shapes are compared;
* ``stage`` / ``snapshot``: the source node of the same graph is compared (keys and shapes).

Each problem is one line at the init's YAML line: which init, and the first mismatched keys/shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .errors import KDGraphError, Problem, SpecError

if TYPE_CHECKING:
    from .graph import DistillGraph
    from .spec import GraphSpec

INIT_KINDS = ("checkpoint", "from", "stage", "snapshot")


def all_inits(spec: GraphSpec) -> Iterator[tuple[str, dict[str, Any], tuple]]:
    """(node, init, YAML path) of every init action: the nodes' own, then each stage's."""
    for name, node in spec.nodes.items():
        if node.init:
            yield name, node.init, ("nodes", name, "init")
    for i, stage in enumerate(spec.stages):
        for name, init in stage.init.items():
            yield name, init, ("stages", i, "init", name)


def _node_state(state: Mapping[str, torch.Tensor], node: str) -> dict[str, torch.Tensor]:
    prefix = f"nodes.{node}."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _declared(node: Any) -> tuple:
    return node.kind, node.type, node.params, node.inputs, node.taps


def _dependency_state(spec: GraphSpec, name: str, init: Mapping[str, Any]) -> dict[str, torch.Tensor] | None:
    """The dependency graph's state_dict as the run would train it, built on the meta device.

    None when its node is declared exactly as ours (same net or op, parameters, inputs, data): it fits
    by construction, and the build (whose meta-device init imports much of torch) is skipped.
    """
    from .check import spec_data_info
    from .deps import dependency_of
    from .graph import DistillGraph
    from .meta import weightless
    from .spec import load_spec

    dep = dependency_of(spec, init)  # exactly what the run will pass it (deps.py)
    child = load_spec(dep.path, dep.overrides)
    theirs = child.nodes.get(init.get("node", name))
    alike = theirs is not None and _declared(spec.nodes[name]) == _declared(theirs)
    if alike and spec_data_info(spec) == spec_data_info(child):
        return None
    with weightless():
        return DistillGraph(child, spec_data_info(child)).state_dict()


def _one_line(e: KDGraphError) -> str:
    lines = e.lines() if hasattr(e, "lines") else [str(e)]
    more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
    return " ".join(lines[0].split()) + more


def init_problems(spec: GraphSpec, graph: DistillGraph) -> list[Problem]:
    import copy

    from .nets.checkpoint import load_checkpoint, mismatch_report

    problems: list[Problem] = []
    for name, init, path in all_inits(spec):
        kind = next((k for k in INIT_KINDS if k in init), None)
        if kind is None or name not in graph.nodes:
            continue  # the meaning checks have reported it
        where = (*path, kind)
        expected = graph.nodes[name].state_dict()
        source = init.get("node", name)
        try:
            if kind == "checkpoint":
                target = (spec.base_dir / init["checkpoint"]).expanduser()
                strict = init.get("strict", True)
                # into a copy: the checked graph is the one that trains, and a stage's init comes later
                load_checkpoint(copy.deepcopy(graph.nodes[name]), target, key=init.get("key", "model"), strict=strict)
                continue
            if kind == "from":
                full = _dependency_state(spec, name, init)
                if full is None:
                    continue  # declared alike: it fits
                state, what = _node_state(full, source), f"graph {init['from']}"
            else:
                if source not in graph.nodes:
                    problems.append(spec.problem(where, f"init {kind}: {init[kind]}: no node {source!r} to copy"))
                    continue
                state, what = graph.nodes[source].state_dict(), f"{kind} {init[kind]}"
        except KDGraphError as e:  # the checkpoint or the dependency graph is itself broken
            # a checkpoint's report is the one the run would give (its lines list the keys); a graph's, one line
            problems.append(spec.problem(where, str(e) if kind == "checkpoint" else f"init {kind}: {_one_line(e)}"))
            continue
        if not state:
            problems.append(spec.problem(where, f"init {kind}: {what} has no node {source!r} with weights"))
            continue
        report = [r.replace(" in file vs ", " there vs ").replace(" in model", " here")
                  for r in mismatch_report(state, expected, strict=True)]
        if report:
            problems.append(
                spec.problem(
                    where,
                    f"init {kind}: node {source!r} of {what} does not fit node {name!r}: {'; '.join(report)}",
                    "make the two nodes the same net with the same parameters",
                )
            )
    return problems


def check_inits(spec: GraphSpec, graph: DistillGraph) -> None:
    problems = init_problems(spec, graph)
    if problems:
        raise SpecError(problems)
