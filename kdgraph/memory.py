"""Memory of a training step, estimated before training from a step on fake tensors.

The graph is built under ``FakeTensorMode`` (tensors with shapes, dtypes and storages but no data), one
warm-up step creates the optimizer state, and a second step runs under a dispatch mode that tracks every
storage an operation creates and frees (weak references: a storage counts while anything -- a value, an
autograd node's saved tensor, a gradient -- holds it). So the estimate follows the same rules as the real
allocator above the between-steps level: activations kept for the backward pass, gradients, temporaries,
values freed at their last use by the plan. Per node, ``activations`` is what the node's forward leaves
alive (its outputs and what autograd saved for its backward); ``peak`` is the highest level during the
step, and ``persistent`` what lives between steps (parameters, buffers, optimizer state).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .output_cache import human_bytes

if TYPE_CHECKING:
    from .graph import DataInfo, DistillGraph
    from .plan import StagePlan
    from .spec import GraphSpec


@dataclass
class NodeMemory:
    name: str
    params: int  # bytes of the node's parameters and buffers
    activations: int  # bytes its forward leaves alive during the step


@dataclass
class StageMemory:
    stage: str
    batch: int
    nodes: list[NodeMemory] = field(default_factory=list)
    persistent: int = 0  # parameters, buffers and optimizer state: alive between steps
    peak: int = 0  # the step's highest level above `persistent`

    @property
    def total(self) -> int:
        return self.persistent + self.peak


class _LiveStorages(TorchDispatchMode):
    """Bytes of the storages created inside this mode that are still referenced, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.level = 0
        self.peak = 0
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.level -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = nbytes
                    self.level += nbytes
                    weakref.finalize(storage, self._free, nbytes)
        self.peak = max(self.peak, self.level)
        return out


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_memory(spec: GraphSpec, info: DataInfo, batch: int | None = None) -> list[StageMemory]:
    """Per stage with losses: per-node parameter and activation bytes, and the step's peak, at `batch`
    (default: the graph's ``data.batch_size``), with the stage's optimizer (same class, same state)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .graph import DistillGraph

    with FakeTensorMode(allow_non_fake_inputs=True):
        graph = DistillGraph(spec, info)
        return _estimate(graph, spec, int(batch or spec.data["batch_size"]))


def _estimate(graph: DistillGraph, spec: GraphSpec, batch: int) -> list[StageMemory]:
    info = graph.data_info
    image = torch.randn(batch, info.channels, info.image_size, info.image_size)
    label = torch.randint(0, info.num_classes, (batch,))
    batch_ = (image, label, torch.arange(batch))
    return [_stage_memory(graph, spec, stage, batch_) for stage in graph.plan.stages if stage.edges]


def _stage_memory(graph: DistillGraph, spec: GraphSpec, stage: StagePlan, batch: tuple) -> StageMemory:
    from .train.optim import build_optimizer

    graph.set_stage(stage)
    graph.train()
    cfg = spec.stages[stage.index].train
    # the per-parameter loop allocates what the fused kernels do, and runs on fake tensors
    cfg = {**cfg, "optimizer": {**cfg["optimizer"], "impl": "for-loop"}}
    optimizer = build_optimizer(graph, stage, cfg, torch.device("cpu"))
    tracker = _LiveStorages()
    per_node: dict[str, int] = {}

    def observe(kind: str, name: str, before: bool) -> None:
        if kind == "node":
            per_node[name] = per_node.get(name, 0) + (-tracker.level if before else tracker.level)

    def step(observe=None) -> None:
        total, _ = graph.forward(*batch, observe=observe)
        if total.requires_grad:
            total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates the optimizer state, as the first real step does
    with tracker:
        step(observe)
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    persistent = _bytes(graph.parameters()) + _bytes(graph.buffers()) + _bytes(state)
    nodes = []
    for name in (s.name for s in stage.program if s.kind == "node"):
        module = graph.nodes[name]
        nodes.append(NodeMemory(name, _bytes(module.parameters()) + _bytes(module.buffers()), per_node[name]))
    return StageMemory(stage.name, len(batch[1]), nodes, persistent, tracker.peak)


def memory_table(stage: StageMemory) -> list[str]:
    """A stage's estimate as the lines `kdgraph plan` prints."""
    rows = [("node", "parameters", "activations")]
    rows += [(n.name, human_bytes(n.params), human_bytes(max(n.activations, 0))) for n in stage.nodes]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = [f"  memory at batch {stage.batch} (estimated from one step on fake tensors):"]
    lines += ["    " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(
        f"    between steps {human_bytes(stage.persistent)} (parameters, buffers, optimizer state) + step peak "
        f"{human_bytes(stage.peak)} (activations, gradients, temporaries) = {human_bytes(stage.total)}"
    )
    return lines
