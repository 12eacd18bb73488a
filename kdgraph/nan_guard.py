"""A checkpoint is "good" only when its weights and optimizer state are finite.

The loss check sees a NaN loss; weights can turn infinite one step earlier (an lr schedule with a
huge gamma) while every loss so far was finite. So every checkpoint is checked before it is
written: a non-finite one stops the run and names the last good checkpoint, which is then truly good.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import RunError

if TYPE_CHECKING:
    from .spec import GraphSpec


def first_nonfinite(state: Any, where: str = "") -> str | None:
    """The dotted place of the first NaN/Inf floating tensor in a (nested) state, or None."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return None if bool(torch.isfinite(state).all()) else (where or "tensor")
        return None
    if isinstance(state, dict):
        items: Any = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        bad = first_nonfinite(value, f"{where}.{key}" if where else str(key))
        if bad:
            return bad
    return None


def refuse_nonfinite(state: dict[str, Any], spec: GraphSpec, step: int, saved: int | None, run_dir: Path) -> None:
    """RunError when the weights or optimizer state about to be saved hold NaN/Inf."""
    for key in ("graph", "optimizer"):
        bad = first_nonfinite(state.get(key), key)
        if bad is None:
            continue
        kept = f"step {saved}" if saved is not None else "none yet"
        path = ("train", "optimizer") if key == "optimizer" else ("train",)
        raise RunError(
            spec.problem(
                path,
                f"{'weights' if key == 'graph' else 'optimizer state'} became NaN/Inf by step {step} ({bad}); "
                f"stopped. Last good checkpoint: {kept}, in {run_dir / 'checkpoints'}",
                "lower the lr (check lr_schedule gamma and warmup) or set train.grad_clip",
            ).format()
        )
