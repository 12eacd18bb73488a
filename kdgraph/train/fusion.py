"""train.fuse at a stage's start: the planner's groups of peers handed to the graph to run as one call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..fuse import stack_problem
from ..plan import StagePlan, fusable_peers

if TYPE_CHECKING:
    from ..graph import DistillGraph
    from ..spec import GraphSpec


def attach_fusion(graph: DistillGraph, spec: GraphSpec, stage: StagePlan, cfg: dict[str, Any], log) -> None:
    """Fuse the stage's peer groups as train.fuse says (off, on, auto); the decisions are logged."""
    mode = cfg.get("fuse", "off")
    groups = fusable_peers(spec, stage)
    for line in graph.use_fusion(groups, mode, log):
        log(f"  train.fuse: {line}")
    if mode != "off" and groups:
        log(f"  train.fuse: {mode}: {', '.join(' + '.join(g) for g in groups)} checked at the first batch")


def fusion_plan_lines(spec: GraphSpec, graph: DistillGraph, stage: StagePlan) -> list[str]:
    """What `kdgraph plan` says of a stage's peers: which groups may run as one call, or why not."""
    groups = fusable_peers(spec, stage)
    if not groups:
        return []
    mode = spec.stages[stage.index].train.get("fuse", "off")
    lines = [f"  fusable peers (train.fuse: {mode}; one call with stacked channels, proven at the first batch):"]
    for names in groups:
        why = stack_problem(names, [graph.nodes[n] for n in names])
        node = spec.nodes[names[0]]
        what = f"{node.type} on {node.inputs[0]}"
        lines.append(f"    peers {' + '.join(names)}: {what}" + (f"; not stackable: {why}" if why else ""))
    return lines
