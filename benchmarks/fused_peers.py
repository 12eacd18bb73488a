"""Fused peers (``train.fuse``) against the same nets run one by one: time and equality of a training step.

    python benchmarks/fused_peers.py                       # CPU-sized: batch 16, three cases
    python benchmarks/fused_peers.py --device cuda --batch 64,512

Cases: ``slkd`` (graphs/slkd.yaml: two resnet32x4 SL-teachers beside the frozen teacher and the student),
``dml`` (graphs/dml.yaml: two resnet32 peers) and ``dml_wrn`` (the same with wrn_40_2 peers). For each,
kdgraph's whole training step (``TrainStep``: forward, backward, optimizer) is built twice from the same
weights, once with the peers fused (``graph.use_fusion(..., "on")``, proven at the first batch), and timed in
alternation in this process (AB BA ...; the median of per-block ratios). A ratio below 1 means fusing is
faster on this device: ``train.fuse: auto`` makes that choice per run at its first batch.

Equality, after one step from the same weights on the same batch (the largest difference of any weight,
scaled by its size): `diff64` fused vs alone in float64 (the same arithmetic: ~1e-15), `diff32` the same in
float32, and `fp32 err` float32's own error on this step (alone in float32 against alone in float64). At
random initialisation a deep net's float32 step can itself be 1e-3 off (batch norm over few samples): a
float32 difference is judged against that error, the arithmetic by the float64 one.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
import yaml
from _common import ROOT, build_kdgraph, interleaved, machine, median_ratio, pick_device, strip_init

from kdgraph.plan import fusable_peers

CASES = {"slkd": ("slkd.yaml", {}), "dml": ("dml.yaml", {}), "dml_wrn": ("dml.yaml", {"net": "wrn_40_2"})}


def doc_for(case: str, batch: int) -> dict:
    file, change = CASES[case]
    doc = strip_init(yaml.safe_load((ROOT / "graphs" / file).read_text()))
    for name in ("peer1", "peer2"):
        if change and name in doc["nodes"]:
            doc["nodes"][name] = {**doc["nodes"][name], **change}
    doc["data"] = {"dataset": "synthetic", "image_size": 32, "channels": 3, "classes": 100, "batch_size": batch}
    return doc


def _pair(doc: dict, device: torch.device, dtype: torch.dtype = torch.float32):
    """The step built twice from the same weights (in `dtype`), the second with its peers fused."""
    torch.manual_seed(0)
    alone = build_kdgraph(doc, device)
    fused = build_kdgraph(doc, device)
    if dtype != torch.float32:
        alone.graph.to(dtype), fused.graph.to(dtype)
    fused.graph.load_state_dict(alone.graph.state_dict())
    refused = fused.graph.use_fusion(fusable_peers(fused.spec, fused.graph.stage), "on")
    return alone, fused, refused


def _batch(batch: int, device: torch.device, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device, dtype)
    y = torch.randint(0, 100, (batch,), generator=g).to(device)
    return x, y, torch.arange(batch, device=device)


@torch.no_grad()
def _largest(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest difference of any weight, scaled by the weight's size (at least 1)."""
    pairs = zip(a.parameters(), b.parameters())
    return max(float((p - q).abs().max()) / max(1.0, float(q.abs().max())) for p, q in pairs)


def step_differences(doc: dict, batch: int, device: torch.device) -> tuple[float, float, float]:
    """After one step from the same weights on the same batch: fused vs alone in float64 and in float32, and
    float32's own error (alone in float32 vs alone in float64), the yardstick of a float32 difference."""
    exact = {}
    for dtype in (torch.float64, torch.float32):
        alone, fused, _ = _pair(doc, device, dtype)
        x, y, idx = _batch(batch, device, dtype)
        fused(x, y, idx), alone(x, y, idx)
        exact[dtype] = (alone.graph, fused.graph)
    (a64, f64), (a32, f32) = exact[torch.float64], exact[torch.float32]
    return _largest(f64, a64), _largest(f32, a32), _largest(a32.double(), a64)


def run_case(case: str, batch: int, device: torch.device, steps: int, repeats: int) -> dict:
    doc = doc_for(case, batch)
    d64, d32, floor = step_differences(doc, min(batch, 16) if device.type == "cpu" else batch, device)
    alone, fused, refused = _pair(doc, device)
    x, y, idx = _batch(batch, device)
    a, b = (lambda: fused(x, y, idx)), (lambda: alone(x, y, idx))
    a(), b()  # the first fused batch proves the stacked call equal (kdgraph/fuse.py)
    note = "; ".join(refused + fused.graph.fusion_notes())
    ta, tb = interleaved(a, b, steps, repeats, device)
    return {
        "case": case,
        "batch": batch,
        "fused_ms": 1000 * statistics.median(ta),
        "alone_ms": 1000 * statistics.median(tb),
        "ratio": median_ratio(ta, tb),
        "d64": d64,
        "d32": d32,
        "floor": floor,
        "note": note,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (CPU 16, CUDA 64,512)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed block (CPU 1, CUDA 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per variant (CPU 6, CUDA 10)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    batches = [int(b) for b in (args.batch or ("64,512" if cuda else "16")).split(",")]
    steps, repeats = args.steps or (10 if cuda else 1), args.repeats or (10 if cuda else 6)
    print(machine(), f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    head = f"{'case':8} {'batch':>5} {'fused ms':>9} {'alone ms':>9} {'ratio':>6}"
    print(f"{head} {'diff64':>8} {'diff32':>8} {'fp32 err':>8}")
    ok = True
    for case in args.cases.split(","):
        for batch in batches:
            r = run_case(case, batch, device, steps, repeats)
            ok &= r["d64"] <= 1e-10 and r["d32"] <= max(1e-5, 2 * r["floor"])
            print(
                f"{r['case']:8} {r['batch']:5d} {r['fused_ms']:9.2f} {r['alone_ms']:9.2f} {r['ratio']:6.3f} "
                f"{r['d64']:8.1e} {r['d32']:8.1e} {r['floor']:8.1e}  ({r['note']})",
                flush=True,
            )
    verdict = "met" if ok else "NOT met"
    print(f"equal: float64 within 1e-10, float32 within max(1e-5, 2 x float32's own error): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
