"""Shared pieces of the benchmarks: building kdgraph's training step as train.py does, timing, peak memory."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from kdgraph.catalog import load_builtins  # noqa: E402
from kdgraph.graph import DataInfo, DistillGraph  # noqa: E402
from kdgraph.registry import LOSSES, NETS, OPS  # noqa: E402
from kdgraph.spec import GraphSpec, load_spec  # noqa: E402
from kdgraph.train import build_optimizer  # noqa: E402
from kdgraph.train.step import LossMeter, TrainStep  # noqa: E402

_ACCELERATOR: list[Any] = []


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def accelerator(device: torch.device, precision: str = "fp32"):
    """The process's Accelerator (Accelerate's state is a singleton: one device and precision per process)."""
    from accelerate import Accelerator

    mixed = {"fp32": "no", "bf16": "bf16"}[precision]
    if not _ACCELERATOR:
        _ACCELERATOR.append(Accelerator(cpu=device.type == "cpu", mixed_precision=mixed))
    acc = _ACCELERATOR[0]
    if acc.mixed_precision != mixed or acc.device.type != device.type:
        raise RuntimeError("one precision and device per process: run other settings in another process")
    return acc


def missing(spec_doc: dict) -> list[str]:
    """Registry names a graph document uses that this checkout does not provide yet."""
    load_builtins()
    out = []
    for node in spec_doc["nodes"].values():
        if "net" in node and node["net"] not in NETS:
            out.append(f"net {node['net']}")
        if "op" in node and node["op"] not in OPS:
            out.append(f"op {node['op']}")
    out += [f"loss {e['loss']}" for e in spec_doc["edges"] if e["loss"] not in LOSSES]
    return out


def strip_init(doc: dict) -> dict:
    """The document without `init:` (benchmarks use random weights: no teacher training, no files)."""
    doc = {**doc, "nodes": {k: {kk: vv for kk, vv in v.items() if kk != "init"} for k, v in doc["nodes"].items()}}
    if "stages" in doc:
        doc["stages"] = [{k: v for k, v in s.items() if k != "init"} for s in doc["stages"]]
    return doc


@dataclass
class KDGraphStep:
    """kdgraph's training step exactly as train.py runs it: prepared graph, TrainStep, LossMeter."""

    graph: DistillGraph
    model: torch.nn.Module
    optimizer: Any
    step: TrainStep
    meter: LossMeter
    spec: GraphSpec

    def __call__(self, image: torch.Tensor, label: torch.Tensor, index: torch.Tensor) -> None:
        total, losses = self.step.forward(image, label, index)
        self.step.update(total)
        self.meter.add(losses)


def build_kdgraph(
    doc: dict, device: torch.device, precision: str = "fp32", channels_last: bool = False, compile: bool = False
) -> KDGraphStep:
    """Build, prepare and wrap a graph document for training on `device`, as Trainer._run_stage does."""
    spec = load_spec(document=doc)
    from kdgraph.data import data_info_of

    info = DataInfo(*data_info_of(spec.data))
    graph = DistillGraph(spec, info)
    stage = graph.plan.stages[0]
    graph.set_stage(stage)
    if channels_last:
        graph.to(memory_format=torch.channels_last)
    graph.to(device)
    cfg = spec.stages[0].train
    optimizer = build_optimizer(graph, stage, cfg, device)
    acc = accelerator(device, precision)
    model, optimizer = acc.prepare(graph, optimizer)
    if compile:
        model = torch.compile(model)
    step = TrainStep(acc, model, optimizer, cfg.get("grad_clip"))
    meter = LossMeter(len(graph.loss_names(stage)), 10_000, device)
    return KDGraphStep(graph, model, optimizer, step, meter, spec)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, over `steps` calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def interleaved(
    a: Callable[[], None], b: Callable[[], None], steps: int, repeats: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Per-step times of a and b, measured in alternation (AB BA AB ...) so drift hits both alike."""
    ta, tb = [], []
    for r in range(repeats):
        order = [(a, ta), (b, tb)] if r % 2 == 0 else [(b, tb), (a, ta)]
        for fn, out in order:
            out.append(time_steps(fn, steps, device))
    return ta, tb


def median_ratio(ta: list[float], tb: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(ta, tb))


# ----------------------------------------------------------------------------- peak memory


def cpu_peak_bytes(fn: Callable[[], None], warmup: int, steps: int) -> int:
    """Peak of torch's CPU allocations above the pre-step level while `fn` runs `steps` times.

    torch's CPU allocator keeps no statistics and tracemalloc does not see it, but the profiler with
    ``profile_memory=True`` records every allocation and free (size, time) that goes through it: the
    peak is the maximum of the running sum of those events over the profiled steps. This counts
    exactly the tensors torch allocates (activations, gradients, temporaries, lazily created
    optimizer state), not malloc's caching.
    """
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(steps):
            fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    )
    peak = level = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


def count_ops(fn: Callable[[], None]) -> int:
    """Tensor operations `fn` dispatches from Python (top-level aten ops, the profiler's count)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


class _quiet_stderr:
    """Silence the profiler's start/stop lines (written by C++ straight to file descriptor 2)."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def cuda_peak_bytes(fn: Callable[[], None], warmup: int, steps: int, device: torch.device) -> int:
    """Peak CUDA memory allocated above the pre-step level (torch.cuda.max_memory_allocated)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def machine() -> str:
    """One line naming the machine, for RESULTS.md."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}){gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )
