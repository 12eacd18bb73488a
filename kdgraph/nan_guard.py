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


def first_nonfinite(state: Any) -> str | None:
    """The dotted place of the first NaN/Inf floating tensor in a (nested) state, or None.

    One read-back per device, not one per tensor: this runs at every checkpoint.
    """
    places: list[tuple[str, torch.Tensor]] = []
    _collect(state, "", places)
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(places):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        flags = torch.stack([torch.isfinite(places[i][1]).all() for i in indices])
        if not bool(flags.all()):
            return places[indices[int((~flags).nonzero()[0])]][0]
    return None


def _collect(state: Any, where: str, out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and state.numel():
            out.append((where or "tensor", state))
        return
    items: Any = (
        state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    )
    for key, value in items:
        _collect(value, f"{where}.{key}" if where else str(key), out)


def refuse_nonfinite(state: dict[str, Any], spec: GraphSpec, step: int, saved: int | None, run_dir: Path) -> None:
    """RunError when the weights or optimizer state about to be saved hold NaN/Inf."""
    for key in ("graph", "optimizer"):
        bad = first_nonfinite({key: state.get(key)})
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
