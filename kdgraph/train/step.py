"""The training step without host synchronisation: forward, backward, update, and a loss meter on device.

    step = TrainStep(accelerator, model, optimizer, grad_clip=None)
    meter = LossMeter(num_edges, capacity=log_every, device=device)
    for batch in loader:
        total, losses = step.forward(batch.image, batch.label, batch.index)
        step.update(total)
        meter.add(losses)                  # one device copy; nothing is read back
    sums, steps, first_bad = meter.read(accelerator)   # at log boundaries only: one sync

``TrainStep`` goes around Accelerate's per-step wrappers when they would do nothing (no gradient
scaler, no accumulation, no DeepSpeed/XLA): ``AcceleratedOptimizer.step`` probes the Python path for
an optional package on every call and ``Accelerator.backward`` divides the loss by 1, which together
cost more than a small model's whole step on a CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RunError
from ..routes import uses_routes

# Accelerate's backward / optimizer wrappers are only plain pass-throughs on these
_DIRECT_TYPES = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_MLU", "MULTI_SDAA", "MULTI_MUSA", "MULTI_NPU")


class TrainStep:
    """Forward under autocast, backward, gradient clipping and the optimizer update of a prepared model."""

    def __init__(self, accelerator: Any, model: torch.nn.Module, optimizer: Any, grad_clip: float | None = None):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.grad_clip = float(grad_clip) if grad_clip else None
        # prepare() already wraps the forward in autocast; entering it again only matters outside prepare
        self.autocast = accelerator.mixed_precision != "no"
        self.direct = (
            accelerator.scaler is None
            and accelerator.gradient_accumulation_steps == 1
            and str(accelerator.distributed_type).split(".")[-1] in _DIRECT_TYPES
        )
        self.inner = getattr(optimizer, "optimizer", optimizer) if self.direct else optimizer
        self.params = [p for group in self.inner.param_groups for p in group["params"]]

    def forward(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        index: torch.Tensor | None,
        variant: torch.Tensor | None = None,
        views: dict[str, torch.Tensor] | None = None,
    ):
        """(weighted total loss, stacked detached edge losses) of one batch (`views`: its named views)."""
        kwargs = {"views": views} if views else {}
        if self.autocast:
            with self.accelerator.autocast():
                return self.model(image, label, index, variant, **kwargs)
        return self.model(image, label, index, variant, **kwargs)

    def update(self, total: torch.Tensor) -> None:
        """Backward the total loss, clip, step the optimizer and drop the gradients."""
        routes = getattr(getattr(self.model, "module", self.model), "route_totals", None)
        if routes is not None and uses_routes(self.optimizer):  # DOT: one backward per gradient route
            if not self.direct or self.grad_clip or self.accelerator.num_processes > 1:
                raise RunError("gradient routes (optim: on edges) run on one process, without a gradient "
                               "scaler (fp16), gradient accumulation or grad_clip")
            self.inner.backward_routes(routes)
            self.inner.step()
            self.inner.zero_grad(set_to_none=True)
            return
        if self.direct:
            total.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            self.accelerator.backward(total)
            if self.grad_clip:
                self.accelerator.clip_grad_norm_(self.params, self.grad_clip)
        self.inner.step()
        self.inner.zero_grad(set_to_none=True)

    def skip(self) -> None:
        """Drop this step's gradients without updating (a non-finite loss under on_nan: skip)."""
        self.inner.zero_grad(set_to_none=True)


class LossMeter:
    """Per-edge training losses kept on the device: one row copy per step, read at log boundaries.

    Rows are kept until read, so the first non-finite step of each edge is known exactly without
    reading anything back per step. ``base`` holds the sums of earlier steps of the window (a resumed
    run's accumulators, or rows folded when more than ``capacity`` steps pass between reads).
    """

    def __init__(self, edges: int, capacity: int, device: torch.device | str):
        self.rows = torch.zeros(max(capacity, 1), edges, device=device)
        self.weights: list[float] | None = None  # the edges' loss weights, for the total's column
        self.start(1)

    def start(self, step: int, sums: torch.Tensor | None = None, steps: int = 0) -> None:
        """Begin a window whose next row is global step `step`, optionally with carried-over sums."""
        edges = self.rows.shape[1]
        self.base = torch.zeros(edges, device=self.rows.device, dtype=torch.float64)
        if sums is not None:
            self.base += sums.to(self.rows.device, torch.float64)
        self.base_steps, self.k, self.first_step = steps, 0, step
        self.folded_bad = [-1] * (edges + 1)  # first non-finite step of each edge and the total, folded rows

    def add(self, losses: torch.Tensor) -> None:
        """Record one step's edge losses (a device-to-device copy)."""
        if self.k == len(self.rows):
            self._fold()
        self.rows[self.k].copy_(losses)
        self.k += 1

    def _fold(self) -> None:
        self.folded_bad = self._merge(self.folded_bad, self._first_bad_rows(self.weights))
        self.base += self._finite_sum()
        self.base_steps += self.k
        self.first_step += self.k
        self.k = 0

    def _finite_sum(self) -> torch.Tensor:
        rows = self.rows[: self.k].double()
        return torch.where(torch.isfinite(rows), rows, torch.zeros_like(rows)).sum(0)

    def _first_bad_rows(self, weights: list[float] | None) -> list[int]:
        """First non-finite step per edge, then of the weighted total (recomputed from the rows, in float64)."""
        rows = self.rows[: self.k].double()
        w = torch.tensor(weights if weights is not None else [1.0] * rows.shape[1], dtype=rows.dtype)
        rows = torch.cat([rows, (rows * w.to(rows.device)).sum(1, keepdim=True)], 1)
        steps = torch.arange(self.k, device=rows.device)[:, None].expand_as(rows)
        first = torch.where(torch.isfinite(rows), torch.full_like(steps, self.k), steps).amin(0, keepdim=True)
        return [int(f) + self.first_step if f < self.k else -1 for f in first[0].tolist()] if self.k else []

    @staticmethod
    def _merge(earlier: list[int], later: list[int]) -> list[int]:
        return [e if e >= 0 else l for e, l in zip(earlier, later)] if later else earlier

    def state(self) -> dict[str, Any]:
        """Sums (float64: a resumed window logs the same means) and steps so far, for a checkpoint."""
        return {"losses": (self.base + self._finite_sum()).cpu(), "steps": self.base_steps + self.k}

    def first_bad(self, accelerator: Any = None) -> list[int]:
        """The first global step at which each edge's loss, then their weighted sum, was NaN/Inf in this
        window (-1: never), over processes. The sum is recomputed here with ``weights`` from the recorded
        losses, so the step itself need not record it (a float32 overflow of the sum alone goes unseen)."""
        bad = self._merge(self.folded_bad, self._first_bad_rows(self.weights))
        if accelerator is not None and accelerator.num_processes > 1:
            never = 2**62
            flags = torch.tensor([b if b >= 0 else never for b in bad], device=accelerator.device)
            bad = [b if b < never else -1 for b in accelerator.gather(flags[None]).amin(0).tolist()]
        return bad

    def read(self, accelerator: Any = None) -> tuple[list[float], int]:
        """(mean finite loss of each edge over this window, averaged over processes; steps in the window)."""
        sums = self.base + self._finite_sum()
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), "mean")
        steps = self.base_steps + self.k
        return (sums / max(steps, 1)).tolist(), steps
