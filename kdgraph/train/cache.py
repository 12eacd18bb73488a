"""train.cache at a stage's start: an output cache per cacheable node, filled as train.cache_fill says.

The planner names the nodes (``plan.cacheable``: frozen nets on the image); this module sizes their
stores from one sample, keys them by what the values depend on, fills them and hands them to the graph
(``DistillGraph.use_output_cache``). Fills, all at inference batch sizes:

* ``precompute``: every (sample, variant) before training (one pass without augmentation);
* ``ahead``: the (sample, variant) pairs the coming epochs draw (the loader draws each epoch from a seeded
  generator, so they are known before it starts) and the store lacks, before those epochs; the step then
  only gathers, with no read-back;
* ``lazy``: the training step computes what it finds missing (one read-back per step).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..cache import OUTPUTS, cache_root
from ..data import TensorLoader, crop_flip
from ..fingerprint import DATA_IRRELEVANT, dataset_fingerprint
from ..output_cache import MIN_ROWS, OutputCache, PortLayout, cache_key, human_bytes, variants_of, weights_hash
from ..plan import StagePlan, cacheable

if TYPE_CHECKING:
    from ..graph import DistillGraph
    from ..spec import GraphSpec

# rows per forward pass of a fill (at least the training batch): on one CPU thread resnet32x4 costs the same
# per row from 4 to 64 rows and twice that at 256 (its activations leave the caches); a GPU wants many
_FILL_BATCH = {"cpu": 64}
_FILL_BATCH_DEVICE = 256


def fill_batch(loader: TensorLoader, device: torch.device) -> int:
    """Rows per forward pass of a fill on `device`."""
    return max(loader.batch_size, _FILL_BATCH.get(device.type, _FILL_BATCH_DEVICE))


@dataclass
class _Filled:
    """One node's store and what the ahead fill has covered (epochs up to `until`, inclusive)."""

    name: str
    ports: frozenset[str]
    cache: OutputCache
    fill: str
    until: int = 0


class OutputCaches:
    """A stage's output caches; ``before_epoch`` runs the ahead fill for the window of epochs it starts."""

    def __init__(self, graph: DistillGraph, loader: Any, accelerator: Any, stage: int, epochs: int, log=None):
        self.graph, self.loader, self.accelerator, self.log = graph, loader, accelerator, log or (lambda *_: None)
        self.stage, self.epochs = stage, epochs
        self.filled: list[_Filled] = []

    def __bool__(self) -> bool:
        return bool(self.filled)

    def before_epoch(self, epoch: int) -> None:
        """Compute what `epoch` (and the next ones, up to a fill batch of draws) will draw and is not stored."""
        for f in self.filled:
            if f.fill != "ahead" or epoch <= f.until:
                continue
            f.until = min(self.epochs, epoch + ahead_epochs(self.loader, self.accelerator.device) - 1)
            keys = [f.cache.keys(*self.loader.drawn(e, self.stage)) for e in range(epoch, f.until + 1)]
            wanted = torch.cat(keys).unique()
            rejected = f.cache.rejected
            missing = wanted[f.cache.missing(wanted)]
            _say_rejected(self.log, f.name, f.cache, f.cache.rejected - rejected)
            fill_keys(self.graph, f.name, f.ports, f.cache, self.loader, missing, self.accelerator)


def ahead_epochs(loader: TensorLoader, device: torch.device) -> int:
    """Epochs one ahead fill covers: enough draws for a fill batch (one epoch of a full-sized dataset)."""
    per_epoch = max(1, min(len(loader.split), loader.num_batches * loader.batch_size) // max(1, loader.world))
    return max(1, math.ceil(fill_batch(loader, device) / per_epoch))


def attach_output_caches(
    graph: DistillGraph,
    spec: GraphSpec,
    stage: StagePlan,
    loader: Any,
    cfg: dict[str, Any],
    accelerator: Any,
    log,
    epochs: int = 1,
) -> OutputCaches:
    """The stage's output caches, in place in `graph` (none when train.cache is off)."""
    graph.drop_output_caches()
    caches = OutputCaches(graph, loader, accelerator, stage.index, epochs, log)
    mode = cfg.get("cache", "off")
    if mode == "off":
        return caches
    nodes = cacheable(spec, stage)
    if not nodes:
        log("  train.cache: nothing in this stage is cacheable (a frozen net that reads only data.image)")
        return caches
    if not isinstance(loader, TensorLoader):
        log("  train.cache: off for this stage: the torchvision loader does not expose its crops and flips")
        return caches
    for name, ports in nodes.items():
        cache = _cache_for(graph, spec, name, ports, loader, cfg, accelerator)
        fill = cfg.get("cache_fill", "auto")
        if fill == "auto":  # without augmentation one pass fills it; with it, only what the run draws
            fill = "precompute" if cache.variants == 1 else "ahead"
        for damage in cache.repaired:
            log(f"  train.cache: {cache.folder}: {damage}; its rows are computed again")
        if fill == "precompute" and not cache.complete():  # every stored row checked, the rest computed
            todo = cache.missing(torch.arange(cache.size))
            _say_rejected(log, name, cache, cache.rejected)
            fill_keys(graph, name, ports, cache, loader, todo, accelerator)
        cache.lazy = fill == "lazy" and not cache.complete()  # ahead: before_epoch stores each epoch's draws
        if mode == "auto" and fill != "ahead" and not cache.lazy and accelerator.device.type == "cuda":
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
        caches.filled.append(_Filled(name, ports, cache, fill))
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
        "data": {k: v for k, v in spec.data.items() if k not in DATA_IRRELEVANT},
        "dataset": dataset_fingerprint(spec.data, spec.base_dir),
        "split": "train",
        "samples": _split_digest(split) if cfg["cache"] in ("file", "auto") else None,
        "variants": variants,
        "pad": loader.pad,
        "precision": cfg["precision"],
        "channels_last": cfg["channels_last"],
        "layouts": {k: [list(v.shape), str(v.dtype)] for k, v in layouts.items()},
        "torch": torch.__version__.split("+")[0],
        "device": device.type,
    }
    key = cache_key(facts)
    folder = cache_root() / OUTPUTS / key if cfg["cache"] in ("file", "auto") else None
    where = device if folder is None else "cpu"
    return OutputCache(layouts, len(split), variants, device=where, folder=folder, key=key)


def _split_digest(split) -> str:
    """SHA-256 of the whole training split as loaded (every image and label: which sample index i is).

    Beside the files' fingerprint it covers what no file shows (a synthetic or plugin dataset drawn from
    a seed); CIFAR-100's 150 MB cost about 0.3 s, once per run that keeps a file store."""
    h = hashlib.sha256()
    h.update(str((tuple(split.images.shape), str(split.images.dtype))).encode())
    h.update(split.labels.cpu().contiguous().numpy().tobytes())
    h.update(memoryview(split.images.cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _say_rejected(log, name: str, cache: OutputCache, count: int) -> None:
    if count:
        log(f"  train.cache: {name}: {count} stored rows of {cache.folder} failed their check; computed again")


@torch.no_grad()
def fill_keys(
    graph: DistillGraph, name: str, ports, cache: OutputCache, loader: TensorLoader, keys: torch.Tensor, accelerator
) -> None:
    """Compute and store the values of `keys` (host cache keys) in the training step's precision.

    The keys are split into passes of at most a fill batch (none much smaller than another); a pass of
    fewer than MIN_ROWS rows is padded with repeats of its own samples, so every pass runs the kernels the
    training batch runs and stores the values it would compute, bit for bit.
    """
    split, pad, device = loader.split, loader.pad, accelerator.device
    n = len(keys)
    if not n:
        return
    passes = math.ceil(n / fill_batch(loader, device))
    size = math.ceil(n / passes)
    side = 2 * pad + 1
    for start in range(0, n, size):
        part = keys[start : start + size]
        rows = part.repeat(math.ceil(MIN_ROWS / len(part)))[:MIN_ROWS] if len(part) < MIN_ROWS else part
        index, variant = rows // cache.variants, rows % cache.variants
        images = split.images[index.to(split.images.device)]
        if cache.variants > 1:
            v = variant.to(images.device)
            images = crop_flip(images, (v // 2) // side, (v // 2) % side, (v % 2).bool(), pad)
        x = loader.normalizer(images.to(device, non_blocking=True))
        with accelerator.autocast():
            out = graph.node_outputs(name, x, ports)
        cache.put(part, {k: t[: len(part)] for k, t in out.items()})


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
