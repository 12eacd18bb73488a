"""The `init: {seed: N}` action: re-initialise a node as if it were built afresh with seed N.

KCD's Table 3 asks whether the student's starting point matters (theta0 vs another random draw): the
node is built again by its registry entry under ``torch.manual_seed(N)`` (the global RNG is left as it
was) and its parameters and buffers (BatchNorm statistics too) are copied into the live module, so
optimizers, hooks and devices keep pointing at the same tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .graph import DistillGraph


def fresh_state(graph: DistillGraph, name: str, seed: int) -> dict[str, torch.Tensor]:
    """The state_dict node `name` has when built with the global RNG seeded to `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module, _ = graph._build(graph.spec.nodes[name], graph.facts)
    return module.state_dict()


def reinitialise(graph: DistillGraph, name: str, seed: int) -> None:
    """Overwrite node `name`'s weights and buffers with a fresh build under `seed`."""
    graph.nodes[name].load_state_dict(fresh_state(graph, name, seed))
