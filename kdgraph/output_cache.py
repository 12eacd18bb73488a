"""Stored outputs of frozen, deterministic subgraphs, per (sample, augmentation variant).

A frozen net in eval mode whose only input is the image computes a fixed function of the sample: of its
index in the training split and of the augmentation drawn for it (crop offsets and flip: with zero padding
p there are (2p + 1)^2 x 2 variants, 162 on CIFAR; one without augmentation). The planner marks such values
cacheable; with ``train.cache`` on, the training step gathers them from this store instead of running the
net. Each (sample, variant) is computed at most once, at inference batch sizes, and written in place:

    key    = index * variants + variant          variant = (oy * (2p + 1) + ox) * 2 + flip
    values[port][key]  the port's value for that sample as the net computed it (the run's dtype)
    filled[key]        whether it has been computed

The store is keyed by everything the values depend on (the producing node's resolved spec and weights, the
dataset and its preprocessing, the precision); in ``file`` mode it lives under the cache directory as
memory-mapped files shared by every run with the same key, so the seeds and sweeps of one teacher pay for
its forward passes once.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .manifest import Manifest

# the fewest rows a forward pass that fills the store runs: kernels pick other algorithms for a handful of
# rows (oneDNN's values 1e-5 apart below 4 rows), so a smaller pass is padded to keep the values bitwise
MIN_ROWS = 8


@dataclass(frozen=True)
class PortLayout:
    """The shape (without the batch) and dtype of one cached port."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def variants_of(pad: int, augment: bool) -> int:
    """How many augmentation variants a sample has: crop offsets x flips, or one without augmentation."""
    return (2 * pad + 1) ** 2 * 2 if augment else 1


def variant_ids(oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Each sample's variant number from its crop offsets and flip (the loader's draws)."""
    return (oy * (2 * pad + 1) + ox) * 2 + flip.long()


def weights_hash(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(facts: dict[str, Any]) -> str:
    """A short stable digest of what the cached values depend on (JSON-able facts)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class OutputCache:
    """Per-port value tables over (sample, variant) keys, in memory or memory-mapped from files.

    ``lazy``: the training step computes and stores the keys it finds missing (one read-back per step);
    once complete (``precompute``) it only gathers.
    """

    lazy: bool = True

    def __init__(
        self,
        ports: dict[str, PortLayout],
        samples: int,
        variants: int,
        device: torch.device | str = "cpu",
        folder: Path | None = None,
    ):
        self.ports, self.samples, self.variants = dict(ports), samples, variants
        self.size = samples * variants
        self.folder = folder
        items = ports.items()
        if folder is None:
            self.values = {p: torch.empty((self.size, *lay.shape), dtype=lay.dtype, device=device) for p, lay in items}
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=device)
        else:
            files = Manifest(folder)  # what kdgraph wrote here: `kdgraph cache clear` deletes only that
            files.make_root()
            self.values = {
                p: _mapped(folder / f"{_file(p)}.bin", (self.size, *lay.shape), lay.dtype, files) for p, lay in items
            }
            self.filled = _mapped(folder / "filled.bin", (self.size,), torch.bool, files)
            manifest = folder / "cache.json"
            if not manifest.exists():
                layout = {p: [list(lay.shape), str(lay.dtype)] for p, lay in ports.items()}
                blob = json.dumps({"samples": samples, "variants": variants, "ports": layout}) + "\n"
                files.write_new(manifest, blob.encode())

    @property
    def nbytes(self) -> int:
        return self.size * (sum(lay.nbytes for lay in self.ports.values()) + 1)

    def keys(self, index: torch.Tensor, variant: torch.Tensor | None) -> torch.Tensor:
        return index * self.variants + (variant if variant is not None else 0)

    def missing(self, keys: torch.Tensor) -> torch.Tensor:
        """Positions in `keys` whose values are not stored yet."""
        return (~self.filled[keys.to(self.filled.device)]).nonzero().flatten().to(keys.device)

    def complete(self) -> bool:
        return bool(self.filled.all())

    def get(self, keys: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        keys = keys.to(self.filled.device)
        return {p: v[keys].to(device, non_blocking=True) for p, v in self.values.items()}

    def put(self, keys: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        keys = keys.to(self.filled.device)
        for p, v in self.values.items():
            v[keys] = outputs[p].detach().to(v.device, v.dtype)
        self.filled[keys] = True  # after the values: a reader that sees the flag sees the values

    def to(self, device: torch.device | str) -> OutputCache:
        """The same tables moved (copied) to `device`, e.g. a filled file cache into GPU memory."""
        moved = OutputCache.__new__(OutputCache)
        moved.ports, moved.samples, moved.variants, moved.size, moved.folder = (
            self.ports, self.samples, self.variants, self.size, None,
        )  # fmt: skip
        moved.values = {p: v.to(device) for p, v in self.values.items()}
        moved.filled = self.filled.to(device)
        moved.lazy = self.lazy
        return moved


def _mapped(path: Path, shape: tuple[int, ...], dtype: torch.dtype, files: Manifest) -> torch.Tensor:
    """A tensor backed by `path` (created zero-filled at its full size), shared with other processes."""
    count = math.prod(shape)
    if not path.exists() or path.stat().st_size != count * dtype.itemsize:
        with open(path, "wb") as fh:
            fh.truncate(count * dtype.itemsize)
        files.record_inplace(path)  # written in place from now on: recorded by inode, not by hash
    return torch.from_file(str(path), shared=True, size=count, dtype=dtype).view(shape)


def _file(port: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in port)


def human_bytes(nbytes: int) -> str:
    """Bytes as MiB/GiB, for tables."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
