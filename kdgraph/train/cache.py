"""train.cache at a stage's start: an output cache per cacheable node, filled as train.cache_fill says.

The planner names the nodes (``plan.cacheable``: frozen nets on the image); this module sizes their
stores from one sample, keys them by what the values depend on, fills them (``precompute``: every
(sample, variant) at the evaluation batch size; ``lazy``: the training step computes what is missing) and
hands them to the graph (``DistillGraph.use_output_cache``).
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

import torch

from ..cache import OUTPUTS, cache_root
from ..data import TensorLoader, crop_flip
from ..output_cache import OutputCache, PortLayout, cache_key, human_bytes, variants_of, weights_hash
from ..plan import StagePlan, cacheable

if TYPE_CHECKING:
    from ..graph import DistillGraph
    from ..spec import GraphSpec

# data settings that change which values a net computes (the rest: batch sizes, workers, loader kind, do not)
_DATA_IRRELEVANT = ("batch_size", "eval_batch_size", "workers", "loader", "drop_last", "download", "root")


def attach_output_caches(
    graph: DistillGraph, spec: GraphSpec, stage: StagePlan, loader: Any, cfg: dict[str, Any], accelerator: Any, log
) -> dict[str, OutputCache]:
    """The stage's output caches, in place in `graph` (none when train.cache is off)."""
    graph.drop_output_caches()
    mode = cfg.get("cache", "off")
    if mode == "off":
        return {}
    nodes = cacheable(spec, stage)
    if not nodes:
        log("  train.cache: nothing in this stage is cacheable (a frozen net that reads only data.image)")
        return {}
    if not isinstance(loader, TensorLoader):
        log("  train.cache: off for this stage: the torchvision loader does not expose its crops and flips")
        return {}
    caches = {}
    for name, ports in nodes.items():
        cache = _cache_for(graph, spec, name, ports, loader, cfg, accelerator)
        fill = cfg.get("cache_fill", "auto")
        if fill == "auto":  # without augmentation one pass fills it; with it, only what the run draws
            fill = "precompute" if cache.variants == 1 else "lazy"
        if fill == "precompute" and not cache.complete():
            _precompute(graph, name, ports, cache, loader, cfg, accelerator)
        cache.lazy = not cache.complete()
        if mode == "auto" and not cache.lazy and accelerator.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(accelerator.device)
            if cache.nbytes < free // 4:  # complete and small enough: gather on the device, no copies
                cache = cache.to(accelerator.device)
                cache.lazy = False
        where = f"files under {cache.folder}" if cache.folder else f"{accelerator.device} memory"
        filled = int(cache.filled.sum())
        log(
            f"  train.cache: {name} ({', '.join(sorted(ports))}) gathered from {where}: {cache.samples} samples x "
            f"{cache.variants} variants, {human_bytes(cache.nbytes)}, {filled}/{cache.size} stored, fill {fill}"
        )
        graph.use_output_cache(name, cache)
        caches[name] = cache
    return caches


def _cache_for(
    graph: DistillGraph, spec: GraphSpec, name: str, ports: frozenset[str], loader: TensorLoader, cfg, accelerator
) -> OutputCache:
    split, device = loader.split, accelerator.device
    variants = variants_of(loader.pad, loader.train and loader.augment)
    sample = loader.normalizer(split.images[:1].to(device))
    with accelerator.autocast():
        one = graph.node_outputs(name, sample, ports)
    layouts = {k: PortLayout(tuple(v.shape[1:]), v.dtype) for k, v in one.items()}
    node = spec.nodes[name]
    facts = {
        "node": {"net": node.type, "params": node.params, "taps": node.taps, "ports": sorted(ports)},
        "weights": weights_hash(graph.nodes[name]),
        "data": {k: v for k, v in spec.data.items() if k not in _DATA_IRRELEVANT},
        "split": _fingerprint(split),
        "variants": variants,
        "pad": loader.pad,
        "precision": cfg["precision"],
        "channels_last": cfg["channels_last"],
        "layouts": {k: [list(v.shape), str(v.dtype)] for k, v in layouts.items()},
        "torch": torch.__version__.split("+")[0],
        "device": device.type,
    }
    folder = cache_root() / OUTPUTS / cache_key(facts) if cfg["cache"] in ("file", "auto") else None
    where = device if folder is None else "cpu"
    return OutputCache(layouts, len(split), variants, device=where, folder=folder)


def _fingerprint(split) -> str:
    """A digest of the training split's labels and a strided sample of its images (which samples index i is)."""
    h = hashlib.sha256()
    h.update(split.labels.cpu().numpy().tobytes())
    step = max(1, len(split) // 64)
    h.update(split.images[::step].cpu().contiguous().numpy().tobytes())
    h.update(str(tuple(split.images.shape)).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def _precompute(graph, name: str, ports, cache: OutputCache, loader: TensorLoader, cfg, accelerator) -> None:
    """Every (sample, variant) the cache lacks, at the evaluation batch size, in the training step's precision."""
    split, pad, device = loader.split, loader.pad, accelerator.device
    batch = max(loader.batch_size, 256)
    side = 2 * pad + 1
    n = len(split)
    for variant in range(cache.variants):
        oy, ox, flip = (variant // 2) // side, (variant // 2) % side, bool(variant % 2)
        for start in range(0, n, batch):
            index = torch.arange(start, min(start + batch, n))
            keys = cache.keys(index, torch.full_like(index, variant))
            if not cache.missing(keys).numel():
                continue
            images = split.images[index.to(split.images.device)]
            if cache.variants > 1:
                k = len(index)
                images = crop_flip(
                    images,
                    torch.full((k,), oy, device=images.device),
                    torch.full((k,), ox, device=images.device),
                    torch.full((k,), flip, device=images.device),
                    pad,
                )
            x = loader.normalizer(images.to(device, non_blocking=True))
            with accelerator.autocast():
                cache.put(keys, graph.node_outputs(name, x, ports))


def _bytes_per_sample(graph: DistillGraph, name: str, ports: frozenset[str]) -> int:
    """Bytes of a sample's cached ports, from an empty batch (nothing computed)."""
    info = graph.data_info
    shape = (info.channels, info.image_size, info.image_size)
    try:
        out = graph.node_outputs(name, torch.zeros(0, *shape), ports)
    except Exception:  # a net that flattens with view(n, -1) cannot take an empty batch: one image then
        out = graph.node_outputs(name, torch.zeros(1, *shape), ports)
    return sum(math.prod(v.shape[1:]) * v.element_size() for v in out.values())


def cache_plan_lines(spec: GraphSpec, graph: DistillGraph, stage: StagePlan, samples: int | None = None) -> list[str]:
    """What `kdgraph plan` says of a stage's cacheable values: per node, the ports and the store's size."""
    from ..data import pad_of

    nodes = cacheable(spec, stage)
    if not nodes:
        return []
    info = graph.data_info
    augment = bool(spec.data.get("augment", True))
    variants = variants_of(pad_of(info.image_size), augment)
    mode = spec.stages[stage.index].train.get("cache", "off")
    lines = [f"  cacheable (train.cache: {mode}; a frozen net on the image: stored per sample and crop/flip):"]
    for name, ports in nodes.items():
        per = _bytes_per_sample(graph, name, ports) * variants
        total = f" = {human_bytes(per * samples)} for {samples:,} samples" if samples else ""
        lines.append(f"    {name}: {', '.join(sorted(ports))}; {variants} variants x {per / variants:,.0f} B{total}")
    return lines
