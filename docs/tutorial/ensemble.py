"""A kdgraph plugin: an ensemble of logits with learned weights, as the op `weighted_ensemble`."""

from __future__ import annotations

import torch
from torch import nn

from kdgraph import PortInfo, register_op


@register_op("weighted_ensemble")
class WeightedEnsemble(nn.Module):
    """Ensemble of n logits with learned weights: out = sum_i softmax(a)_i z_i, a starting at 0.

    With ``detach_inputs`` (the default) the inputs are detached, so a loss on ``out`` trains the
    weights a and nothing upstream: the ensemble is a teacher, not a way for the peers to cheat.
    Output ``out``: logits of the inputs' shape.
    """

    outputs = ("out",)

    def __init__(self, detach_inputs: bool = True, in_info: list[PortInfo] | None = None):
        super().__init__()
        if not in_info or len(in_info) < 2:
            raise ValueError("weighted_ensemble needs at least two inputs")
        self.gate = nn.Parameter(torch.zeros(len(in_info)))
        self.detach_inputs = bool(detach_inputs)
        self.stops_gradient = self.detach_inputs  # tells the planner nothing upstream learns through it
        self.info = in_info[0]

    def forward(self, *logits: torch.Tensor) -> torch.Tensor:
        z = torch.stack([x.detach() if self.detach_inputs else x for x in logits])  # (n, N, C)
        w = torch.softmax(self.gate, dim=0)
        return (w.view(-1, 1, 1) * z).sum(0)

    def port_info(self) -> dict[str, PortInfo]:
        return {"out": PortInfo("logits", self.info.channels)}
