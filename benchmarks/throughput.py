"""Training throughput (images/s of whole steps: loader + forward + backward + update) per speed option.

    python benchmarks/throughput.py                              # GPU: kd, slkd, skd, teskd x batch 64, 512
    python benchmarks/throughput.py --device cpu --graphs kd --batches 16 --steps 3 --configs base,host

Every (graph, batch, configuration) runs in a fresh subprocess (Accelerate's precision is per process,
compiled code and allocator caches must not leak between configurations) and does what
``Trainer._run_stage`` does for the graph's first training stage: the real loader of ``data.loader``,
``TrainStep`` and ``LossMeter``, with random weights (``init:`` removed). The data is CIFAR-100 when it
is under ``--data`` (or $KDGRAPH_DATA), else synthetic CIFAR-shaped images (3 x 32 x 32, 100 classes).

Configurations (each changes one thing from ``base``, except ``fast``):

    base           device-resident loader, fp32, NCHW, eager, fused optimizer on CUDA (auto)
    bf16           + bf16 autocast (the loader normalises in bf16)
    channels_last  + channels_last weights and inputs
    bf16_cl        + both
    compile        + torch.compile of the planned graph (compile time excluded: warm-up steps)
    foreach        optimizer.impl foreach instead of auto
    for-loop       optimizer.impl for-loop (per-parameter kernels)
    host           loader: host (tensors in host memory, augmented there, copied per batch)
    torchvision    loader: torchvision (DataLoader, PIL transforms, --workers processes)
    fast           bf16 + channels_last + compile
    cache          train.cache: auto (frozen teachers' outputs stored per sample and crop/flip; the timed steps
                   run after the warm-up, so a lazily filled store is still filling: see teacher_cache.py)
    fuse           train.fuse: on (nets of one architecture on one input as one stacked call; SLKD's
                   SL-teachers: see fused_peers.py)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _common import ROOT, machine, missing, pick_device, sync

GRAPHS = ("kd", "slkd", "skd", "teskd")
CONFIGS: dict[str, list[str]] = {
    "base": [],
    "bf16": ["++train.precision=bf16"],
    "channels_last": ["++train.channels_last=true"],
    "bf16_cl": ["++train.precision=bf16", "++train.channels_last=true"],
    "compile": ["++train.compile=true"],
    "foreach": ["++train.optimizer.impl=foreach"],
    "for-loop": ["++train.optimizer.impl=for-loop"],
    "host": ["++data.loader=host"],
    "torchvision": ["++data.loader=torchvision"],
    "fast": ["++train.precision=bf16", "++train.channels_last=true", "++train.compile=true"],
    "cache": ["++train.cache=auto"],
    "fuse": ["++train.fuse=on"],
}


def overrides_for(graph: Path, batch: int, config: str, data_root: str | None, workers: int, size: int) -> list[str]:
    """Overrides turning a graph file into this benchmark's run (random weights, the chosen options)."""
    doc = yaml.safe_load(graph.read_text())
    out = [f"~nodes.{name}.init" for name, node in doc["nodes"].items() if isinstance(node, dict) and "init" in node]
    cifar = data_root and (Path(data_root) / "cifar-100-python" / "train").exists()
    if cifar:
        out += ["++data.dataset=cifar100", f"++data.root={Path(data_root).resolve()}", "++data.download=false"]
    else:
        out += ["++data.dataset=synthetic", "++data.image_size=32", "++data.channels=3", "++data.classes=100"]
        out += [f"++data.size={size}", "++data.test_size=100"]
    out += [f"++data.batch_size={batch}", "++data.augment=true", "++data.loader=device", f"++data.workers={workers}"]
    out += ["++train.progress=false"]
    return out + CONFIGS[config]


def child(graph: str, batch: int, config: str, args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process."""
    from kdgraph.errors import KDGraphError
    from kdgraph.spec import load_spec
    from kdgraph.train import Trainer, build_optimizer
    from kdgraph.train.step import LossMeter, TrainStep

    path = ROOT / "graphs" / f"{graph}.yaml"
    if args.device == "cpu":
        os.environ["KDGRAPH_CPU"] = "1"
    try:
        spec = load_spec(path, overrides_for(path, batch, config, args.data, args.workers, args.size))
    except KDGraphError as e:
        return {"skipped": "; ".join(e.lines())[:300]}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(spec, Path(tmp), log=lambda *_: None)
        trainer._prepare()  # dataset, dry run, graph (as a run does)
        stage = next(s for s in trainer.plan.stages if s.edges)
        cfg = spec.stages[stage.index].train
        train_loader, _, _ = trainer._loaders(cfg)
        graph_module, acc, device = trainer.graph, trainer.accelerator, trainer.device
        graph_module.set_stage(stage)
        if cfg["channels_last"]:
            graph_module.to(memory_format=torch.channels_last)
        graph_module.to(device)
        optimizer = build_optimizer(graph_module, stage, cfg, device)
        model, optimizer = acc.prepare(graph_module, optimizer)
        if cfg["compile"]:
            model = torch.compile(model)
        step = TrainStep(acc, model, optimizer, cfg.get("grad_clip"))
        meter = LossMeter(len(graph_module.loss_names(stage)), int(cfg["log_every"]), device)

        def batches():
            epoch = 1
            while True:
                yield from train_loader.epoch(epoch, stage.index)
                epoch += 1

        stream = batches()

        def run(n: int) -> tuple[int, bool]:
            images = 0
            for _ in range(n):
                batch_ = next(stream)
                total, losses = step.forward(batch_.image, batch_.label, batch_.index)
                step.update(total)
                meter.add(losses)
                images += len(batch_.label)
            means, _ = meter.read()  # what a log boundary does (one read-back)
            meter.start(1)
            return images, all(math.isfinite(m) for m in means)

        t0 = time.perf_counter()
        run(args.warmup)
        sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        images, finite = run(args.steps)
        sync(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": images / seconds, "warmup_s": warm, "peak_gib": peak, "finite": finite}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--graphs", default=",".join(GRAPHS), help="graph files under graphs/, comma-separated")
    p.add_argument("--batches", default="64,512", help="global batch sizes, comma-separated")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, allocator)")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers of the torchvision loader")
    p.add_argument("--size", type=int, default=10240, help="synthetic training images (when no CIFAR-100)")
    p.add_argument("--data", default=os.environ.get("KDGRAPH_DATA"), help="folder holding cifar-100-python/")
    p.add_argument("--child", nargs=3, metavar=("GRAPH", "BATCH", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = pick_device(args.device).type
    if args.child:
        graph, batch, config = args.child
        try:
            result = child(graph, int(batch), config, args)
        except torch.OutOfMemoryError:
            result = {"skipped": "out of memory"}
        print("RESULT " + json.dumps(result))
        return 0
    print(f"# {machine()}; device {args.device}")
    print(f"# {args.steps} timed steps after {args.warmup} warm-up steps; images/s of whole training steps")
    print(f"{'graph':6} {'batch':>5} {'config':14} {'images/s':>10} {'warm-up s':>9} {'peak GiB':>8}")
    for graph in args.graphs.split(","):
        path = ROOT / "graphs" / f"{graph}.yaml"
        if not path.exists():
            print(f"{graph:6} skipped: graphs/{graph}.yaml does not exist yet")
            continue
        lacking = missing(yaml.safe_load(path.read_text()))
        if lacking:
            print(f"{graph:6} skipped: not registered yet: {', '.join(lacking)}")
            continue
        for batch in [int(b) for b in args.batches.split(",")]:
            for config in args.configs.split(","):
                cmd = [sys.executable, __file__, "--child", graph, str(batch), config]
                cmd += ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
                cmd += ["--workers", str(args.workers), "--size", str(args.size)]
                if args.data:
                    cmd += ["--data", args.data]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
                    print(f"{graph:6} {batch:5d} {config:14} failed: {tail}")
                    continue
                r = json.loads(lines[-1][len("RESULT ") :])
                if "skipped" in r:
                    print(f"{graph:6} {batch:5d} {config:14} skipped: {r['skipped']}")
                    continue
                peak = f"{r['peak_gib']:8.2f}" if r["peak_gib"] is not None else f"{'-':>8}"
                bad = "" if r["finite"] else "  (non-finite losses)"
                print(f"{graph:6} {batch:5d} {config:14} {r['images_per_s']:10.1f} {r['warmup_s']:9.1f} {peak}{bad}")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
