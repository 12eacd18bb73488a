"""Engine overhead: kdgraph's training step against a hand-written PyTorch loop doing the same work.

    python benchmarks/step_overhead.py                 # every case, on the GPU when there is one
    python benchmarks/step_overhead.py --device cpu --cases mlp,kd
    python benchmarks/step_overhead.py --threads 1      # on a shared machine: no oversubscribed threads

For each case the same graph is trained two ways in one process, from the same weights, on the same
batch already in memory, with the same optimizer (class, fused/foreach flags, one param group per
node):

* kdgraph: DistillGraph prepared by Accelerate, stepped by ``kdgraph.step.TrainStep`` and its
  losses recorded by ``LossMeter`` -- exactly what train.py does per step;
* hand-written: plain modules (the MLP as ``nn.Sequential``, the ResNets as zoo classes called as
  ordinary classifiers) with the weights copied in, the losses written inline with the operations the
  loss library performs (so the ratio measures the engine, not the loss formulation; pass
  ``--reference-losses`` for RepDistiller's ``F.kl_div`` / fused ``F.cross_entropy`` instead), then
  ``loss.backward(); opt.step(); opt.zero_grad()``, and the per-loss values kept on the device as
  any loop that logs them would.

Times are taken in alternation (AB BA AB ...) and the median of the per-repeat ratios is reported.
Memory is the peak above the between-steps level (activations, gradients, temporaries; weights and
optimizer state are the same by construction): ``torch.cuda.max_memory_allocated`` on CUDA; on the
CPU the running sum of the allocations torch's profiler records, see ``_common.cpu_peak_bytes``.
Before timing, one step of each from the same weights on the same batch must give the same weights
(tight tolerance): the two variants do the same work.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from _common import (
    NETS,
    build_kdgraph,
    count_ops,
    cpu_peak_bytes,
    cuda_peak_bytes,
    interleaved,
    machine,
    median_ratio,
    missing,
    pick_device,
)
from torch import nn

OPTIM = {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}
T = 4.0


def kd_library_math(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Hinton KD written out with the very operations kdgraph.losses.kd performs (batchmean, x T^2)."""
    log_p_s, log_p_t = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
    return ((log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * (T * T)).mean()


def ce_library_math(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy as kdgraph.losses.ce computes it (per sample, then the batch mean)."""
    return F.cross_entropy(s, y, reduction="none").mean()


def kd_reference(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Hinton KD as RepDistiller writes it (F.kl_div): fewer kernels than the library's formulation."""
    return F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T


def ce_reference(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(s, y)


# the hand-written loop's losses: the library's math by default (the benchmark measures the engine);
# --reference-losses switches to the reference code's formulation (measures the loss library too)
LOSS_FNS = {"kd": kd_library_math, "ce": ce_library_math}


def kd_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return LOSS_FNS["kd"](s, t)


def ce_loss(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return LOSS_FNS["ce"](s, y)


def doc_mlp(batch: int) -> dict:
    return {
        "kdgraph": 1,
        "name": "bench_mlp",
        "data": {"dataset": "synthetic", "channels": 3, "image_size": 32, "classes": 10, "batch_size": batch},
        "nodes": {
            "teacher": {"net": "mlp", "hidden": [512, 512], "frozen": True},
            "student": {"net": "mlp", "hidden": [128]},
        },
        "edges": [
            {"loss": "ce", "from": "data.label", "to": "student.logits", "weight": 0.1},
            {"loss": "kd", "from": "teacher.logits", "to": "student.logits", "weight": 0.9, "T": T},
        ],
        "train": {"optimizer": dict(OPTIM)},
    }


def doc_kd(batch: int) -> dict:
    return {
        "kdgraph": 1,
        "name": "bench_kd",
        "data": {"dataset": "synthetic", "channels": 3, "image_size": 32, "classes": 100, "batch_size": batch},
        "nodes": {"teacher": {"net": "resnet32x4", "frozen": True}, "student": {"net": "resnet8x4"}},
        "edges": [
            {"loss": "ce", "from": "data.label", "to": "student.logits", "weight": 0.1},
            {"loss": "kd", "from": "teacher.logits", "to": "student.logits", "weight": 0.9, "T": T},
        ],
        "train": {"optimizer": dict(OPTIM)},
    }


ALPHA, LAM, ETA, RHO = 0.1, 1.0, 3.0, 0.5


def doc_slkd(batch: int) -> dict:
    """graphs/slkd.yaml's graph (logit-space rho-mix), written inline so the hand-written twin matches it."""
    return {
        "kdgraph": 1,
        "name": "bench_slkd",
        "data": {"dataset": "synthetic", "channels": 3, "image_size": 32, "classes": 100, "batch_size": batch},
        "nodes": {
            "teacher": {"net": "resnet32x4", "frozen": True},
            "slt1": {"net": "resnet32x4"},
            "slt2": {"net": "resnet32x4"},
            "student": {"net": "resnet8x4"},
            "slt": {"op": "mix", "in": ["slt1.logits", "slt2.logits"], "weights": [RHO, 1 - RHO]},
        },
        "edges": [
            {"loss": "ce", "from": "data.label", "to": "student.logits", "weight": ALPHA * (LAM + ETA)},
            {"loss": "kd", "from": "teacher.logits", "to": "student.logits", "weight": (1 - ALPHA) * LAM, "T": T},
            {"loss": "kd", "from": "slt.out", "to": "student.logits", "weight": (1 - ALPHA) * ETA, "T": T},
            {"loss": "ce", "from": "data.label", "to": "slt1.logits", "weight": ALPHA},
            {"loss": "kd", "from": "teacher.logits", "to": "slt1.logits", "weight": 1 - ALPHA, "T": T},
            {"loss": "ce", "from": "data.label", "to": "slt2.logits", "weight": ALPHA},
            {"loss": "kd", "from": "teacher.logits", "to": "slt2.logits", "weight": 1 - ALPHA, "T": T},
        ],
        "train": {"optimizer": dict(OPTIM)},
    }


# ----------------------------------------------------------------------------- hand-written twins


def hand_mlp(node: nn.Module) -> nn.Module:
    """kdgraph's mlp node as a plain nn.Sequential with its weights."""
    layers: list[nn.Module] = [nn.Flatten()]
    for m in node.body:
        layers.append(copy.deepcopy(m))
    layers.append(copy.deepcopy(node.fc))
    seq = nn.Sequential(*layers)
    seq.load_state_dict({k: v for k, v in zip(seq.state_dict(), node.state_dict().values())})
    return seq


def hand_zoo(node: nn.Module, net: str, classes: int) -> nn.Module:
    """A fresh zoo net of the same kind, used as an ordinary classifier, with the node's weights."""
    fresh = NETS.get(net).obj(num_classes=classes)
    fresh.load_state_dict(node.state_dict())
    return fresh.to(next(node.parameters()).device)


class HandLoop:
    """A hand-written training step: modules, losses inline, backward, step, losses kept on device."""

    def __init__(self, modules: dict[str, nn.Module], frozen: set[str], kd_optimizer, edges: int, device):
        self.m = modules
        for name, module in modules.items():
            module.to(device)
            module.train(name not in frozen)
            module.requires_grad_(name not in frozen)
        groups = [
            {"params": list(modules[g["name"]].parameters()), **{k: v for k, v in g.items() if k != "params"}}
            for g in kd_optimizer.param_groups
        ]
        self.opt = type(kd_optimizer.optimizer)(groups, **kd_optimizer.optimizer.defaults)
        self.rows = torch.zeros(10_000, edges, device=device)
        self.k = 0

    def finish(self, total: torch.Tensor, losses: list[torch.Tensor]) -> None:
        total.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.rows[self.k].copy_(torch.stack([loss.detach() for loss in losses]))
        self.k += 1


class HandKD(HandLoop):
    def __call__(self, x: torch.Tensor, y: torch.Tensor, _index: torch.Tensor) -> None:
        with torch.no_grad():
            t = self.m["teacher"](x)
        s = self.m["student"](x)
        ce = ce_loss(s, y)
        kd = kd_loss(s, t)
        self.finish(0.1 * ce + 0.9 * kd, [ce, kd])


class HandSLKD(HandLoop):
    def __call__(self, x: torch.Tensor, y: torch.Tensor, _index: torch.Tensor) -> None:
        m = self.m
        with torch.no_grad():
            t = m["teacher"](x)
        s = m["student"](x)
        ce_s, kd_ts = ce_loss(s, y), kd_loss(s, t)
        z1 = m["slt1"](x)
        z2 = m["slt2"](x)
        with torch.no_grad():
            mixed = RHO * z1 + (1 - RHO) * z2
        kd_ms = kd_loss(s, mixed)
        ce1, kd1 = ce_loss(z1, y), kd_loss(z1, t)
        ce2, kd2 = ce_loss(z2, y), kd_loss(z2, t)
        total = (
            ALPHA * (LAM + ETA) * ce_s
            + (1 - ALPHA) * LAM * kd_ts
            + (1 - ALPHA) * ETA * kd_ms
            + ALPHA * ce1
            + (1 - ALPHA) * kd1
            + ALPHA * ce2
            + (1 - ALPHA) * kd2
        )
        self.finish(total, [ce_s, kd_ts, kd_ms, ce1, kd1, ce2, kd2])


def hand_for(case: str, graph, optimizer, device) -> HandLoop:
    nodes = graph.nodes
    edges = len(graph.loss_names())
    if case == "mlp":
        mods = {n: hand_mlp(nodes[n]) for n in ("teacher", "student")}
        return HandKD(mods, {"teacher"}, optimizer, edges, device)
    classes = graph.data_info.num_classes
    kinds = {n: graph.spec.nodes[n].type for n in nodes if graph.spec.nodes[n].kind == "net"}
    mods = {n: hand_zoo(nodes[n], kinds[n], classes) for n in kinds}
    cls = HandKD if case == "kd" else HandSLKD
    return cls(mods, {"teacher"}, optimizer, edges, device)


# ----------------------------------------------------------------------------- the benchmark

CASES = {"mlp": doc_mlp, "kd": doc_kd, "slkd": doc_slkd}
# (batch, steps per timed block, repeats); CPU sizes keep the whole run under ~3 minutes on 2 cores
SIZES = {
    "cpu": {"mlp": (64, 10, 41), "kd": (8, 1, 21), "slkd": (4, 1, 15)},
    "cuda": {"mlp": (256, 100, 21), "kd": (64, 20, 15), "slkd": (64, 10, 15)},
}


def setup(case: str, device: torch.device, batch: int):
    """Both variants of a case from the same weights, and the batch; None and a reason when it cannot run."""
    doc = CASES[case](batch)
    lacking = missing(doc)
    if lacking:
        return None, f"not registered yet: {', '.join(lacking)}"
    torch.manual_seed(0)
    kdg = build_kdgraph(doc, device)
    hand = hand_for(case, kdg.graph, kdg.optimizer, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, kdg.graph.data_info.num_classes, (batch,), generator=g).to(device)
    idx = torch.arange(batch, device=device)
    return (kdg, hand, lambda: kdg(x, y, idx), lambda: hand(x, y, idx)), ""


def same_weights(kdg, hand: HandLoop) -> bool:
    """Whether both variants hold the same trainable weights (tight tolerance: one step apart from equal)."""
    return all(
        torch.allclose(p, q, rtol=1e-4, atol=1e-6)
        for n in hand.m
        for p, q in zip(kdg.graph.nodes[n].parameters(), hand.m[n].parameters())
    )


def run_case(case: str, device: torch.device, repeats: int | None, mem_repeats: int, batch: int | None = None) -> dict:
    default_batch, steps, default_repeats = SIZES[device.type][case]
    batch = batch or default_batch
    repeats = repeats or default_repeats
    built, reason = setup(case, device, batch)
    if built is None:
        return {"case": case, "skipped": reason}
    kdg, hand, a, b = built
    a()
    b()
    same = same_weights(kdg, hand)  # one step from the same weights on the same batch: same work
    a()
    b()
    ta, tb = interleaved(a, b, steps, repeats, device)
    ops_a, ops_b = count_ops(a), count_ops(b)
    ma, mb = [], []
    for _ in range(mem_repeats):
        for fn, out in ((a, ma), (b, mb)):
            out.append(cuda_peak_bytes(fn, 1, 1, device) if device.type == "cuda" else cpu_peak_bytes(fn, 1, 1))
    return {
        "case": case,
        "batch": batch,
        "kdgraph_ms": 1000 * statistics.median(ta),
        "hand_ms": 1000 * statistics.median(tb),
        "time_ratio": median_ratio(ta, tb),
        "kdgraph_peak_mb": statistics.median(ma) / 2**20,
        "hand_peak_mb": statistics.median(mb) / 2**20,
        "mem_ratio": statistics.median(ma) / max(statistics.median(mb), 1),
        "same_weights": same,
        "ops": (ops_a, ops_b),
        "repeats": repeats,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--repeats", type=int, help="timed blocks per variant (default per case)")
    p.add_argument("--batch", type=int, help="batch size of every case (default per case and device)")
    p.add_argument("--mem-repeats", type=int, default=3, help="memory measurements per variant")
    p.add_argument("--max-time-ratio", type=float, default=1.03)
    p.add_argument("--max-mem-ratio", type=float, default=1.05)
    p.add_argument(
        "--reference-losses",
        action="store_true",
        help="hand-written losses as RepDistiller writes them (F.kl_div) instead of the library's operations",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference_losses:
        LOSS_FNS.update(kd=kd_reference, ce=ce_reference)
    device = pick_device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {machine()}; device {device}; load average {load:.1f}")
    print("# ops: tensor operations per step dispatched from Python, kdgraph/hand (the profiler's count)")
    print(
        f"{'case':6} {'batch':>5} {'kdgraph ms':>11} {'hand ms':>9} {'time ratio':>10} "
        f"{'kdgraph MB':>10} {'hand MB':>8} {'mem ratio':>9} {'ops':>7}  same weights"
    )
    ok = True
    for case in args.cases.split(","):
        r = run_case(case.strip(), device, args.repeats, args.mem_repeats, args.batch)
        if "skipped" in r:
            print(f"{r['case']:6} skipped: {r['skipped']}")
            continue
        ops = "{}/{}".format(*r["ops"])
        good = r["time_ratio"] <= args.max_time_ratio and r["mem_ratio"] <= args.max_mem_ratio and r["same_weights"]
        ok &= good
        print(
            f"{r['case']:6} {r['batch']:5d} {r['kdgraph_ms']:11.2f} {r['hand_ms']:9.2f} {r['time_ratio']:10.3f} "
            f"{r['kdgraph_peak_mb']:10.2f} {r['hand_peak_mb']:8.2f} {r['mem_ratio']:9.3f} {ops:>7}  {r['same_weights']}"
            + ("" if good else "   <- over budget")
        )
        sys.stdout.flush()
    print(
        f"budget: time ratio <= {args.max_time_ratio}, memory ratio <= {args.max_mem_ratio}: "
        + ("met" if ok else "NOT met")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
