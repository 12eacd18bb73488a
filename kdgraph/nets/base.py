"""The contract between zoo networks and the engine.

A zoo net subclasses ``PortNet`` and implements

* ``forward_ports(x, wanted) -> dict[str, Tensor]``: one forward pass that returns at least the
  ports named in ``wanted`` (a frozenset of names such as ``{"logits", "feat2"}``); the engine asks
  only for what the graph consumes;
* ``port_info() -> dict[str, PortInfo]``: every port it publishes with its kind, channels and stride
  on a 32x32 input (strides relative to the input), so connectors size themselves at plan time.

Ports: ``logits`` (N, classes); ``pooled`` (N, C), the classifier's input; ``feat0..featN`` stage
outputs; ``preact0..preactN`` the same stage outputs before their final ReLU. ``forward(x)`` returns
the logits, so a zoo net is also a plain classifier.

Any other ``nn.Module`` works as a node too: the engine takes its ``forward`` output as ``logits``
and reads ``taps`` (module paths) with forward hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import PortInfo


class PortNet(nn.Module):
    """Base class of zoo networks; see the module docstring for the contract."""

    def forward_ports(self, x: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def port_info(self) -> dict[str, PortInfo]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_ports(x, frozenset({"logits"}))["logits"]


def staged_ports(
    stage_channels: list[int], stage_strides: list[int], pooled: int, num_classes: int
) -> dict[str, PortInfo]:
    """Port table of a net made of stages followed by global pooling and a linear classifier."""
    ports = {"logits": PortInfo("logits", num_classes, None), "pooled": PortInfo("vector", pooled, None)}
    for k, (c, s) in enumerate(zip(stage_channels, stage_strides)):
        ports[f"feat{k}"] = PortInfo("map", c, s)
        ports[f"preact{k}"] = PortInfo("map", c, s)
    return ports
