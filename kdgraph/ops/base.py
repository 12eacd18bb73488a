"""The contract between operation nodes and the engine.

An op is an ``nn.Module`` class registered with ``@register_op("name")``. The graph file's extra
keys on the node are its constructor's keyword arguments. The engine also passes, when the
constructor declares them:

* ``in_info: list[PortInfo]``: what each input port carries (kind, channels, stride), so an op sizes
  its layers at build time (a connector from 64 to 256 channels);
* ``num_classes: int``: the dataset's class count;
* ``nodes: Mapping[str, nn.Module]``: the networks built before it (``call`` applies one of their
  submodules with their weights; such references must not be registered as submodules).

``forward(*inputs)`` receives the ``in:`` ports in order and returns one tensor (port ``out``) or a
dict of ports; ``outputs`` lists the port names. Optional hooks:

* ``port_info() -> dict[str, PortInfo]`` after construction (default: ``out`` of kind "any");
* ``set_epoch(epoch)``: called at the start of every epoch (epochs count from 1) for scheduled
  parameters, which reach the constructor as ``Schedule`` objects;
* ``fit_begin()``, ``fit_step(*inputs)``, ``fit_end()``: a data-dependent fit over the training set
  with no gradient, run for the nodes a stage names under ``fit:`` (KCD's channel matching).

Optional class attributes read by the engine:

* ``stops_gradient = True``: nothing upstream receives gradient through this op (``detach``);
* ``node_refs``: names of constructor parameters whose values are other nodes' names (``call``'s
  ``node``): those nodes are built before this op and travel with it into a deployed slice.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import PortInfo
from ..schedule import value_at


class Op(nn.Module):
    """Optional base class of ops: one output port ``out`` of unknown shape.

    It also keeps the current epoch (``set_epoch``; 1 until the engine calls it) so that an op reads
    a possibly scheduled parameter with ``self.scheduled(self.factor)``.
    """

    outputs: tuple[str, ...] = ("out",)
    epoch: int = 1

    def port_info(self) -> dict[str, PortInfo]:
        return {name: PortInfo() for name in self.outputs}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def scheduled(self, value: Any) -> Any:
        """The value of a parameter at the current epoch (a Schedule's ``at``, anything else as is)."""
        return value_at(value, self.epoch)


def first_info(in_info: list[PortInfo] | None, index: int = 0) -> PortInfo:
    """``in_info[index]``, or an unknown port when the engine gave no metadata."""
    return in_info[index] if in_info and len(in_info) > index else PortInfo()


def channels_of(in_info: list[PortInfo] | None, index: int, what: str) -> int:
    """Channel count of input ``index``; a clear error when the engine could not tell it."""
    c = first_info(in_info, index).channels
    if c is None:
        raise ValueError(f"{what}: the channel count of input {index} is unknown; "
                         "feed it from a port with known channels or give the size explicitly")
    return int(c)
