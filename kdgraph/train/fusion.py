"""train.fuse at a stage's start: the planner's groups of peers handed to the graph to run as one call."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..fuse import fuse_peers
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
    """What `kdgraph plan` says of a stage's peers: which groups run as one call, proven on a small batch."""
    groups = fusable_peers(spec, stage)
    if not groups:
        return []
    mode = spec.stages[stage.index].train.get("fuse", "off")
    lines = [f"  fusable peers (train.fuse: {mode}; one call with stacked channels, proven at the first batch):"]
    wanted = {s.name: s.wanted for s in stage.program if s.kind == "node"}
    info = graph.data_info
    for names in groups:
        node = spec.nodes[names[0]]
        fused = fuse_peers(names, [graph.nodes[n] for n in names])
        if isinstance(fused, str):
            verdict = f"not fusable: {fused}"
        else:  # the first batch's proof, on two random images: a net that mixes channels is found here
            probe = torch.zeros(2, info.channels, info.image_size, info.image_size)
            why = fused.prove(probe, frozenset().union(*(wanted[n] for n in names)))
            verdict = f"not fusable: {why}" if why else "stacked call equal to each net alone"
        lines.append(f"    peers {' + '.join(names)}: {node.type} on {node.inputs[0]}; {verdict}")
    return lines
