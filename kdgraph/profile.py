"""The cost table of a graph: time per node, per loss, backward and optimizer, memory, images/s.

    kdgraph profile graphs/kd.yaml                          # the current device, the graph's batch size
    kdgraph profile graphs/dkd.yaml --steps 50 data.batch_size=128 --format markdown

What DKD's and SDD's "training time per batch" tables print, per part of the step. Steps of two
kinds alternate on one random batch of the data's shape (no data loading, weights as built: times
do not depend on them; the dataset is not loaded, so CIFAR need not be present):

- the real training step (the graph's forward, backward, optimizer update): the measured step time;
- a timed walk of the same program (``DistillGraph.train_program``), each node and each loss timed
  on its own, then the backward and the optimizer step.

Times are medians over ``--steps`` steps of each kind after ``--warmup`` of each: CUDA events with a
synchronisation at the end of the step on GPU, ``time.perf_counter`` on CPU. "sum of parts / step"
says how much of the measured step the parts account for. Memory per node: on CUDA the allocator's
peak while the node runs, above what was allocated before it; everywhere, the size of the ports it
produces. Overall peak: CUDA allocator peak, or the process's max RSS on CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .memory import estimate_memory
from .peak_memory import MB, peak_memory_mb


@dataclass
class Part:
    """One row of the table: a node's forward, a loss, the backward or the optimizer step."""

    kind: str  # node, loss, backward, optimizer
    name: str
    what: str = ""  # 'net resnet8x4', 'loss kd'
    times: list[float] = field(default_factory=list)  # seconds, one per timed step
    out_mb: float | None = None  # activations a node's forward leaves alive (kdgraph.memory's estimate)
    peak_mb: float | None = None  # CUDA: allocator peak while it runs, above the memory before it

    @property
    def ms(self) -> float:
        return 1000 * statistics.median(self.times)


@dataclass
class Profile:
    graph: str
    stage: str
    device: str
    batch: int
    steps: int
    warmup: int
    parts: list[Part]
    step_times: list[float]  # seconds of each real training step
    peak_memory_mb: float
    precision: str = "fp32"

    @property
    def step_ms(self) -> float:
        return 1000 * statistics.median(self.step_times)

    @property
    def parts_ms(self) -> float:
        return sum(p.ms for p in self.parts)

    @property
    def images_per_s(self) -> float:
        return self.batch / (self.step_ms / 1000)


class _Clock:
    """Intervals of one step: CUDA events read after one synchronisation, or perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []
        self._open: tuple[str, Any] | None = None

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, key: str) -> None:
        self._open = (key, self._now())

    def stop(self) -> None:
        key, begin = self._open
        self.marks.append((key, begin, self._now()))

    def read(self) -> dict[str, float]:
        """Seconds of each interval of this step (synchronises once on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
            out = {k: b.elapsed_time(e) / 1000 for k, b, e in self.marks}
        else:
            out = {k: e - b for k, b, e in self.marks}
        self.marks = []
        return out


def _device() -> torch.device:
    if torch.cuda.is_available() and os.environ.get("KDGRAPH_CPU") != "1":
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile_graph(
    path: str | Path, overrides: list[str] | None = None, steps: int = 10, warmup: int = 3, stage: str | None = None
) -> Profile:
    """Time every part of one training step of `stage` (default: the last) on the current device."""
    from .check import check_graph
    from .errors import SpecError
    from .train import build_optimizer

    spec, graph = check_graph(path, overrides)  # the dry run's graph: it knows which parameters no loss reaches
    names = [s.name for s in graph.plan.stages]
    if stage is not None and stage not in names:
        raise SpecError(f"no stage {stage!r} in {path}; stages: {', '.join(names)}")
    plan = graph.plan.stages[names.index(stage) if stage else -1]
    device = _device()
    cfg = spec.stages[plan.index].train
    graph.set_stage(plan)
    graph.set_epoch(1)
    graph.to(device).train()
    optimizer = build_optimizer(graph, plan, cfg, device)
    info, batch = graph.data_info, int(spec.data["batch_size"])
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, info.channels, info.image_size, info.image_size, generator=g).to(device)
    label = torch.randint(0, info.num_classes, (batch,), generator=g).to(device)
    index = torch.arange(batch, device=device)
    # the training precision, as the Trainer's Accelerator applies it: autocast around the forward
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["precision"])
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
    parts: dict[str, Part] = {}
    for step in plan.program:
        node = spec.nodes.get(step.name) if step.kind == "node" else None
        what = f"{node.kind} {node.type}" if node else f"loss {spec.edge(step.name).loss}"
        parts[f"{step.kind}:{step.name}"] = Part(step.kind, step.name, what)
    parts["backward"] = Part("backward", "backward")
    parts["optimizer"] = Part("optimizer", "optimizer step")
    # activations per node, estimated on fake tensors (the same on every device)
    estimate = next((m for m in estimate_memory(spec, info, batch) if m.stage == plan.name), None)
    for n in estimate.nodes if estimate else []:
        parts[f"node:{n.name}"].out_mb = max(n.activations, 0) / MB
    clock = _Clock(device)

    def real_step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with autocast:
            total, _losses = graph(image, label, index)
        if total.requires_grad:
            total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    def timed_step(first: bool) -> None:
        """One step, each node and loss timed through forward's observer; `first` measures CUDA memory."""
        base: dict[str, int] = {}

        def observe(kind: str, name: str, before: bool) -> None:
            key = f"{kind}:{name}"
            if before:
                if first and device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                    base[key] = torch.cuda.memory_allocated(device)
                clock.start(key)
                return
            clock.stop()
            if first and device.type == "cuda" and kind == "node":
                parts[key].peak_mb = (torch.cuda.max_memory_allocated(device) - base[key]) / MB

        with autocast:
            total, _losses = graph(image, label, index, observe=observe)
        clock.start("backward")
        if total.requires_grad:
            total.backward()
        clock.stop()
        clock.start("optimizer")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.stop()
        for key, seconds in clock.read().items():
            parts[key].times.append(seconds)

    for _ in range(warmup):
        real_step()
        timed_step(first=False)
    timed_step(first=True)  # memory per node (it resets the CUDA peak), not timed
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the overall peak: of the steps below
    for p in parts.values():
        p.times.clear()
    step_times = []
    for _ in range(steps):  # alternated: both kinds see the same machine load
        step_times.append(real_step())
        timed_step(first=False)
    return Profile(
        str(path),
        plan.name,
        torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        batch,
        steps,
        warmup,
        list(parts.values()),
        step_times,
        peak_memory_mb(device),
        cfg["precision"],
    )


def _rows(prof: Profile) -> list[list[str]]:
    total = prof.parts_ms or 1.0
    rows = []
    for p in prof.parts:
        label = {"node": f"forward {p.name}", "loss": f"loss {p.name}"}.get(p.kind, p.name)
        rows.append(
            [
                label,
                p.what,
                f"{p.ms:.3f}",
                f"{100 * p.ms / total:.1f}%",
                "-" if p.out_mb is None else f"{p.out_mb:.2f}",
                "-" if p.peak_mb is None else f"{p.peak_mb:.1f}",
            ]
        )
    return rows


HEAD = ["part", "what", "ms/step", "share", "act. MiB (est.)", "peak MiB"]


def _summary(prof: Profile) -> list[str]:
    return [
        f"sum of parts {prof.parts_ms:.3f} ms; measured step {prof.step_ms:.3f} ms "
        f"(sum of parts / step = {prof.parts_ms / prof.step_ms:.2f})",
        f"images/s {prof.images_per_s:.0f}; peak memory {prof.peak_memory_mb:.0f} MiB "
        f"({'CUDA allocator' if prof.device != 'cpu' else 'process max RSS'})",
    ]


def _title(prof: Profile) -> str:
    return (
        f"profile {prof.graph}, stage {prof.stage}, on {prof.device} ({prof.precision}): batch {prof.batch}, "
        f"median of {prof.steps} steps after {prof.warmup} warm-up (data loading excluded)"
    )


def text(prof: Profile) -> str:
    rows = [HEAD, *_rows(prof)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(HEAD))]
    right = {2, 3, 4, 5}
    body = [
        "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))) for r in rows
    ]
    return "\n".join([_title(prof), *body, *_summary(prof)]) + "\n"


def markdown(prof: Profile) -> str:
    lines = [_title(prof), "", "| " + " | ".join(HEAD) + " |", "|---|---|" + "---:|" * 4]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(prof)]
    return "\n".join([*lines, "", *_summary(prof)]) + "\n"


def cmd_profile(args: argparse.Namespace) -> int:
    from .args import split_args
    from .errors import SpecError

    files, overrides = split_args(args.items)
    if len(files) != 1:
        raise SpecError("profile takes one graph file (and key=value overrides)")
    prof = profile_graph(files[0], overrides, args.steps, args.warmup, args.stage)
    out = (markdown if args.format == "markdown" else text)(prof)
    if args.output:
        Path(args.output).write_text(out)
        print(f"wrote {args.output}")
    else:
        print(out, end="")
    return 0
