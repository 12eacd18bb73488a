"""Ops that shape gradients: reversal/scaling, stop-gradient, identity, and CTKD's learnable temperature."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..params import real
from ..registry import PortInfo, register_op
from ..schedule import Schedule
from .base import Op, first_info


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x in the forward pass; factor * dL/dx in the backward pass."""
    return _ScaleGrad.apply(x, float(factor))


@register_op("grl", params={"factor": real(schedule=True)})
class GradientReversal(Op):
    """Gradient reversal: forward identity, backward x factor (default -1); factor may be a schedule.

    CTKD: the learned temperature passes through ``grl`` with factor ``{cosine: [0, -1], epochs:
    10}``, i.e. lambda(epoch) = (cos(i pi/10) + 1)/2 - 1, i = min(epoch, 10): the gradient that
    reaches the temperature is lambda times the loss gradient (CTKD's code multiplies by lambda), so
    the temperature ascends the KD loss while the student descends it. Output ``out``: the input.
    """

    def __init__(self, factor: float | Schedule = -1.0, in_info: list[PortInfo] | None = None):
        super().__init__()
        self.factor = factor
        self._info = first_info(in_info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_grad(x, self.scheduled(self.factor))

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("detach", params={})
class Detach(Op):
    """Stop-gradient: the input's value, no gradient flows back through it."""

    stops_gradient = True  # read by the planner: nothing upstream gets gradient through this node

    def __init__(self, in_info: list[PortInfo] | None = None):
        super().__init__()
        self._info = first_info(in_info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("identity", params={})
class Identity(Op):
    """The input unchanged: a named alias for a port (e.g. to give a tap a readable name)."""

    def __init__(self, in_info: list[PortInfo] | None = None):
        super().__init__()
        self._info = first_info(in_info)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": self._info}


@register_op("temperature", params={"t_init": real(), "t_min": real(gt=0), "t_range": real(ge=0)})
class Temperature(Op):
    """CTKD's learnable global temperature: T = t_min + t_range * sigmoid(t), a 0-dim tensor; t starts at t_init.

    Takes no inputs (``in:`` omitted or empty); inputs given anyway are ignored, so the node may
    also hang off any port. Defaults t_min=1, t_range=20, t_init=1: T in (1, 21), T = 1 + 20
    sigmoid(1) ~ 15.6 at the start. Typical graph::

        temp: {op: temperature}
        tgrl: {op: grl, in: [temp.out], factor: {cosine: [0, -1], epochs: 10}}
        edges: [{loss: kd, from: teacher.logits, to: student.logits, T: tgrl.out}]

    t belongs to this node (a trainable node: it gets the student's optimizer settings unless the
    node says ``optim``). Output ``out``: a 0-dim float32 tensor.
    """

    # `t_init`, not `init`: a node's `init:` key names where its weights come from
    def __init__(self, t_init: float = 1.0, t_min: float = 1.0, t_range: float = 20.0):
        super().__init__()
        self.t = nn.Parameter(torch.tensor(float(t_init)))
        self.t_min, self.t_range = float(t_min), float(t_range)

    def forward(self, *ignored: torch.Tensor) -> torch.Tensor:
        return self.t_min + self.t_range * torch.sigmoid(self.t.float())

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("any")}
