"""The planned output cache (``train.cache``) against recomputing the frozen teacher, KD resnet32x4 -> resnet8x4.

    python benchmarks/teacher_cache.py --threads 1        # both cases (about 13 minutes on 2 shared cores)
    python benchmarks/teacher_cache.py --cases plain --epochs 4
    python benchmarks/teacher_cache.py --cases seeds --seed-epochs 60   # a quick look (a weaker saving)

Two cases, each run uncached and cached in alternation in this process (after one untimed run each way, so
that first-use imports fall on neither), whole ``Trainer.run()`` wall times (setup, the cache's fill,
training, checkpoints, the final evaluation), on synthetic CIFAR-shaped data
(3 x 32 x 32, 100 classes; ``data.seed`` fixed, so every seed trains on one dataset, as on CIFAR) with a fixed
random teacher loaded from a checkpoint (``init: {checkpoint: ...}``):

* ``plain``: ``augment: false``, a few epochs, twice (each cached run on a fresh store, to average the load
  of the shared machine): the store is precomputed (one inference pass over the training set), then every
  step gathers the teacher's logits instead of running resnet32x4.
* ``seeds``: crop + flip (162 variants a sample), the CIFAR KD recipe's 240 epochs per seed, seeds 0, 1, 2
  sharing one file store (``train.cache: file``), the batch the whole subset (one step an epoch). Before each
  window of epochs the store computes the (sample, variant) pairs those epochs draw and it lacks
  (``cache_fill: ahead``, at inference batch sizes), so each pair costs one teacher forward, ever.

Why the length sets the ratio: a sample drawn N times uniformly out of V = 162 variants shows
V (1 - (1 - 1/V)^N) distinct ones, so the share of draws that need the teacher is
V (1 - (1 - 1/V)^N) / N: 71 % for one seed of 120 epochs, 52 % at 240, 22 % for three seeds of 240
(N = 720, which this case runs), 40 % for three of 120. With the teacher about two thirds of a step, the
ratio tends to 1/3 + 2/3 x that share plus the fixed costs (setup, checkpoints, evaluation): a short
repeat cannot show the saving a recipe-length sweep gets. The printed ``computed`` column is the share
actually computed (pairs stored / draws).

Printed per case: the time ratio cached / uncached and the largest difference between the two variants'
logged losses (every step) and final student weights (the values the cache returns are the teacher's own).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from _common import ROOT, machine

sys.path.insert(0, str(ROOT))
from kdgraph.cache import OUTPUTS  # noqa: E402
from kdgraph.catalog import load_builtins  # noqa: E402
from kdgraph.registry import NETS  # noqa: E402
from kdgraph.spec import load_spec  # noqa: E402
from kdgraph.train import Trainer  # noqa: E402


def graph_doc(teacher_ckpt: Path, size: int, batch: int, epochs: int, augment: bool) -> dict:
    return {
        "kdgraph": 1,
        "name": "kd_cache_bench",
        "data": {
            "dataset": "synthetic", "size": size, "test_size": 64, "image_size": 32, "channels": 3, "classes": 100,
            "batch_size": batch, "augment": augment, "seed": 0,  # one dataset for every train.seed, as CIFAR
        },  # fmt: skip
        "nodes": {
            "teacher": {"net": "resnet32x4", "frozen": True, "init": {"checkpoint": str(teacher_ckpt), "key": "model"}},
            "student": {"net": "resnet8x4"},
        },
        "edges": [
            {"loss": "ce", "from": "data.label", "to": "student.logits", "weight": 0.1},
            {"loss": "kd", "from": "teacher.logits", "to": "student.logits", "weight": 0.9, "T": 4},
        ],
        "train": {
            "epochs": epochs, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "log_every": 1, "eval_every": 10_000, "checkpoint_every": 1_000_000, "progress": False,
        },  # fmt: skip
        "deploy": "student.logits",
    }


def run(path: Path, out: Path, overrides: list[str]) -> tuple[float, list[dict], dict]:
    """(seconds, logged train losses, final student weights) of one run."""
    import json

    t0 = time.perf_counter()
    Trainer(load_spec(path, overrides), out, log=lambda *_: None).run()
    seconds = time.perf_counter() - t0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(out / "final.pt", weights_only=True)["graph"]
    student = {k: v for k, v in state.items() if k.startswith("nodes.student.")}
    return seconds, [r["losses"] for r in lines if r["kind"] == "train"], student


def difference(a: tuple, b: tuple) -> float:
    (_, la, wa), (_, lb, wb) = a, b
    worst = max(abs(x[k] - y[k]) for x, y in zip(la, lb, strict=True) for k in x)
    return max(worst, *(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa))


def stored(folder: Path) -> int:
    """(sample, variant) pairs the file stores under `folder` hold (their filled flags)."""
    flags = list(folder.glob(f"*/{OUTPUTS}/*/filled.bin"))
    return sum(int(torch.from_file(str(f), size=f.stat().st_size, dtype=torch.bool).sum()) for f in flags)


def case(name: str, tmp: Path, ckpt: Path, args: argparse.Namespace) -> None:
    augment = name == "seeds"
    epochs = args.seed_epochs if augment else args.epochs
    size = args.seed_size if augment else args.size
    batch = size if augment else args.batch  # the seeds case: the whole subset, one step an epoch
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(graph_doc(ckpt, size, batch, epochs, augment), sort_keys=False))
    # seeds: three seeds on one store; plain: the same run twice, each on a fresh store (each pays its fill)
    runs = [(seed, "shared") for seed in (0, 1, 2)] if augment else [(0, "first"), (0, "second")]
    plain_s = cached_s = 0.0
    worst = 0.0
    for i, (seed, store) in enumerate(runs):
        os.environ["KDGRAPH_CACHE"] = str(tmp / f"cache-{name}" / store)  # a fresh store: its first run pays
        plain = run(path, tmp / f"{name}-plain-{i}", [f"train.seed={seed}"])
        cached = run(path, tmp / f"{name}-cached-{i}", [f"train.seed={seed}", "train.cache=file"])
        plain_s, cached_s = plain_s + plain[0], cached_s + cached[0]
        worst = max(worst, difference(plain, cached))
    what = f"augment, {len(runs)} seeds x {epochs} epochs" if augment else f"no augment, {epochs} epochs, 2 runs"
    share = stored(tmp / f"cache-{name}") / (len(runs) * epochs * size)  # teacher rows computed / rows drawn
    print(
        f"{name:6} {size:7d} {what:28} {plain_s:9.1f} {cached_s:9.1f} {cached_s / plain_s:7.3f} {worst:10.2e}"
        f" {share:8.1%}",
        flush=True,
    )


def warm_up(tmp: Path, ckpt: Path) -> None:
    """One untimed run each way first: the process's one-time costs (imports on first use) fall on neither."""
    path = tmp / "warm.yaml"
    path.write_text(yaml.safe_dump(graph_doc(ckpt, 16, 16, 1, True), sort_keys=False))
    os.environ["KDGRAPH_CACHE"] = str(tmp / "cache-warm")
    run(path, tmp / "warm-plain", [])
    run(path, tmp / "warm-cached", ["train.cache=file"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="plain,seeds", help="comma-separated: plain, seeds")
    p.add_argument("--size", type=int, default=128, help="training images of the plain case")
    p.add_argument("--epochs", type=int, default=6, help="epochs of the plain case")
    p.add_argument("--seed-size", type=int, default=16, help="training images of the seeds case")
    p.add_argument("--seed-epochs", type=int, default=240, help="epochs per seed of the seeds case (the recipe)")
    p.add_argument("--batch", type=int, default=16, help="batch of the plain case (seeds: its whole subset)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("KDGRAPH_CPU", "1")
    load_builtins()
    print(f"# {machine()}; load average {os.getloadavg()[0]:.1f}")
    print("# whole runs (setup, cache fill, training); ratio = cached / uncached; diff = largest |loss or weight|;")
    print("# computed = teacher rows the cache computed / rows the runs drew")
    print(
        f"{'case':6} {'images':>7} {'setting':28} {'plain s':>9} {'cached s':>9} {'ratio':>7} {'diff':>10}"
        f" {'computed':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        torch.manual_seed(0)
        ckpt = tmp / "teacher.pth"
        torch.save({"model": NETS.get("resnet32x4").obj(num_classes=100).state_dict()}, ckpt)
        warm_up(tmp, ckpt)
        for name in args.cases.split(","):
            case(name.strip(), tmp, ckpt, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
