"""Apply a submodule of another node with that node's weights (SimKD: the teacher's classifier)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import did_you_mean
from ..params import text
from ..registry import PortInfo, register_op
from .base import Op


def _submodule(net: nn.Module, path: str, node: str) -> nn.Module:
    if not path:
        return net
    try:
        return net.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in net.named_modules() if n]
        hint = did_you_mean(path, names) or "its modules: " + ", ".join(n for n, _ in net.named_children())
        raise ValueError(f"call: node {node!r} has no submodule {path!r} ({hint})") from None


@register_op("call", params={"node": text(), "module": text()})
class Call(Op):
    """Run submodule `module` of node `node` on the inputs, with that node's weights (shared, not copied).

    node: a node built earlier (e.g. "teacher"); module: a dotted path inside it (e.g. "fc", the
    classifier; "" for the whole network). The module stays owned by its node: it is not a
    submodule of this op, so this op adds no parameters, its state_dict is empty, and whether the
    weights train follows the owning node (SimKD's teacher classifier stays frozen, while
    gradient still flows through it to the inputs). Output ``out``: the module's output; a Linear
    reports kind logits when it has num_classes outputs. ``node_refs`` names the constructor
    parameters that refer to other nodes: the owning node must be built first and belongs to any
    deployed slice that contains this op.
    """

    node_refs: tuple[str, ...] = ("node",)

    def __init__(
        self, node: str, module: str = "", nodes: Mapping[str, nn.Module] | None = None, num_classes: int | None = None
    ):
        super().__init__()
        if nodes is None or node not in nodes:
            known = sorted(nodes.keys()) if nodes is not None else []
            hint = did_you_mean(node, known) or (
                "nodes built before this one: " + ", ".join(known) if known else "no nodes built before this one"
            )
            raise ValueError(f"call: unknown node {node!r} ({hint}; declare it before the call node)")
        self.node, self.module = node, module
        # A tuple hides the module from nn.Module's registration: no parameters(), no state_dict entries.
        self._target: tuple[nn.Module] = (_submodule(nodes[node], module, node),)
        self._num_classes = num_classes

    @property
    def target(self) -> nn.Module:
        """The shared module (e.g. to build a standalone deployable copy)."""
        return self._target[0]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.target(*inputs)

    def port_info(self) -> dict[str, PortInfo]:
        m = self.target
        if isinstance(m, nn.Linear):
            kind = "logits" if self._num_classes in (None, m.out_features) else "vector"
            return {"out": PortInfo(kind, m.out_features)}
        if isinstance(m, nn.Conv2d):
            return {"out": PortInfo("map", m.out_channels)}
        port_info = getattr(m, "port_info", None)
        if callable(port_info):
            logits = port_info().get("logits")
            if logits is not None:
                return {"out": logits}
        return {"out": PortInfo()}

    def extra_repr(self) -> str:
        return f"node={self.node!r}, module={self.module!r}"
