"""Build modules for their shapes only: on the meta device, with torch.nn.init's initialisers skipped.

    with weightless():
        graph = DistillGraph(spec, info)          # state_dict shapes, no storage, no init
    with uninitialised():
        graph = DistillGraph(spec, info)          # real (CPU) storage, never initialised: validate's dry run

On the meta device an initialiser such as ``kaiming_normal_`` dispatches to torch's Python
reference implementations, whose first use imports torch._dynamo (about 2 s); meta tensors have no
values to initialise anyway, so the initialisers are made identities for the duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn import init

_INITIALISERS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


def _identity(tensor: torch.Tensor, *_args, **_kwargs) -> torch.Tensor:
    return tensor


@contextmanager
def uninitialised() -> Iterator[None]:
    """torch.nn.init's initialisers as identities: parameters keep what torch.empty gave them."""
    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, _identity)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


@contextmanager
def weightless() -> Iterator[None]:
    with uninitialised(), torch.device("meta"):
        yield
