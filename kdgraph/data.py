"""Datasets as uint8 image tensors in memory, and a loader that augments in torch.

Every dataset becomes a ``Split`` (images N x C x H x W uint8, labels int64) plus its normalisation.
The ``host`` loader draws each epoch's order, crop offsets and flips from a generator seeded by
(seed, stage, epoch), so a resumed run sees exactly the batches an uninterrupted one would; the
``device`` loader is the same with the tensors kept on the accelerator.

Datasets: ``cifar100``/``cifar10`` (the python pickle format torchvision downloads; read directly),
``digits`` (scikit-learn's bundled 8x8 handwritten digits, no download), ``synthetic`` (learnable
class prototypes plus noise).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError

CIFAR_MEAN = {"cifar100": (0.5071, 0.4867, 0.4408), "cifar10": (0.4914, 0.4822, 0.4465)}
CIFAR_STD = {"cifar100": (0.2675, 0.2565, 0.2761), "cifar10": (0.2470, 0.2435, 0.2616)}
CIFAR_FILES = {
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
}


@dataclass
class Split:
    images: torch.Tensor  # N x C x H x W, uint8
    labels: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


def data_root(cfg: dict[str, Any], base_dir: Path) -> Path:
    root = cfg.get("root") or os.environ.get("KDGRAPH_DATA") or "data"
    path = Path(root).expanduser()
    return path if path.is_absolute() else (base_dir / path if cfg.get("root") else Path.cwd() / path)


def load_dataset(cfg: dict[str, Any], base_dir: Path, seed: int = 0) -> Dataset:
    """The dataset a graph file's `data:` section names, with `subset` applied."""
    name = cfg["dataset"]
    if name in CIFAR_FILES:
        ds = _cifar(name, data_root(cfg, base_dir), bool(cfg.get("download", True)))
    elif name == "digits":
        ds = _digits()
    elif name == "synthetic":
        ds = _synthetic(cfg, seed)
    elif name == "imagefolder":
        raise DataError("dataset 'imagefolder' needs `data.loader: torchvision` (not available in this build)")
    else:
        raise DataError(f"unknown dataset {name!r}")
    if cfg.get("subset"):
        n = int(cfg["subset"])
        ds.train = Split(ds.train.images[:n], ds.train.labels[:n])
        ds.test = Split(ds.test.images[:n], ds.test.labels[:n])
    return ds


def _cifar(name: str, root: Path, download: bool) -> Dataset:
    folder, train_files, test_files, label_key = CIFAR_FILES[name]
    where = root / folder
    if not all((where / f).exists() for f in train_files + test_files):
        if not download:
            raise DataError(
                f"{name} not found under {where}; set data.download: true or data.root to where {folder}/ lives"
            )
        try:
            import torchvision

            cls = torchvision.datasets.CIFAR100 if name == "cifar100" else torchvision.datasets.CIFAR10
            cls(str(root), train=True, download=True)
        except Exception as e:
            raise DataError(
                f"{name} is not under {where} and could not be downloaded ({_first(e)}); put "
                f"{folder}/ there, or set data.root (or $KDGRAPH_DATA) to its parent folder"
            ) from None

    def read(files: list[str]) -> Split:
        images, labels = [], []
        for f in files:
            try:
                with open(where / f, "rb") as fh:
                    entry = pickle.load(fh, encoding="bytes")
                images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry[label_key])
            except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
                raise DataError(
                    f"{where / f} is not a readable {name} file ({_first(e)}); delete it to download again"
                ) from None
        return Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))

    classes = 100 if name == "cifar100" else 10
    return Dataset(name, read(train_files), read(test_files), classes, CIFAR_MEAN[name], CIFAR_STD[name])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # the fixed split
    train, test = order[:1437], order[1437:]
    return Dataset(
        "digits", Split(images[train], labels[train]), Split(images[test], labels[test]), 10, (0.3057,), (0.3706,)
    )


def _synthetic(cfg: dict[str, Any], seed: int) -> Dataset:
    g = torch.Generator().manual_seed(1000 + seed)
    c, s, k = int(cfg["channels"]), int(cfg["image_size"]), int(cfg["classes"])
    prototypes = torch.rand(k, c, s, s, generator=g) * 255

    def make(n: int) -> Split:
        labels = torch.randint(0, k, (n,), generator=g)
        noise = torch.randn(n, c, s, s, generator=g) * 40
        return Split((prototypes[labels] + noise).clamp(0, 255).to(torch.uint8), labels)

    train, test = make(int(cfg["size"])), make(int(cfg["test_size"]))
    return Dataset("synthetic", train, test, k, (0.5,) * c, (0.25,) * c)


def _first(e: BaseException) -> str:
    return str(e).strip().split("\n")[0] or type(e).__name__


# ----------------------------------------------------------------------------- augmentation


def crop_flip(images: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Per-image random crop with zero padding `pad` and horizontal flip, as one gather.

    Same semantics as torchvision's RandomCrop(size, padding=pad) followed by RandomHorizontalFlip:
    image i is padded with zeros, cropped at (oy[i], ox[i]) in the padded image, then mirrored
    when flip[i].
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = oy[:, None] + ar_h  # n x h
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # n x w
    idx = torch.arange(n, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2)


class Normalizer:
    """uint8 images -> normalised floats (x / 255 - mean) / std, in the chosen dtype and layout."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        dtype=torch.float32,
        channels_last: bool = False,
    ):
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)
        self.dtype, self.channels_last = dtype, channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, images.float(), self.scale).to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class Batch:
    image: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor


class TensorLoader:
    """Batches of an in-memory split; deterministic per (seed, stage, epoch); sharded across processes.

    Each epoch's permutation, crop offsets and flips are drawn up front from one generator, so
    skipping the first k batches (a resumed run) leaves the rest identical. With several processes,
    process r takes batch slice r of every global batch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        normalizer: Normalizer,
        device: torch.device,
        *,
        train: bool,
        augment: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        limit_batches: int | None = None,
        drop_last: bool | None = None,
    ):
        self.split = split
        self.batch_size, self.normalizer, self.device = batch_size, normalizer, device
        self.train, self.augment, self.seed, self.rank, self.world = train, augment, seed, rank, world
        self.pad = max(1, split.images.shape[-1] // 8)  # 4 on 32x32 CIFAR, 1 on 8x8 digits
        self.drop_last = train if drop_last is None else drop_last
        n = len(split)
        full = n // batch_size if self.drop_last else -(-n // batch_size)
        self.num_batches = min(full, limit_batches) if limit_batches else full

    def __len__(self) -> int:
        return self.num_batches

    def epoch(self, epoch: int, stage: int = 0, start: int = 0) -> Iterator[Batch]:
        """Batches of one epoch, beginning after `start` batches already done."""
        n = len(self.split)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + stage * 10_007 + epoch)
            order = torch.randperm(n, generator=g)
            oy = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            ox = torch.randint(0, 2 * self.pad + 1, (n,), generator=g)
            flip = torch.rand(n, generator=g) < 0.5
        else:
            order = torch.arange(n)
        if self.split.images.device != torch.device("cpu"):
            order = order.to(self.split.images.device)
        for b in range(start, self.num_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            per = -(-len(idx) // self.world)
            idx = idx[self.rank * per : (self.rank + 1) * per]
            images = self.split.images[idx]
            if self.train and self.augment:
                cpu_idx = idx.cpu()
                images = crop_flip(
                    images,
                    oy[cpu_idx].to(images.device),
                    ox[cpu_idx].to(images.device),
                    flip[cpu_idx].to(images.device),
                    self.pad,
                )
            images = images.to(self.device, non_blocking=True)
            labels = self.split.labels[idx].to(self.device, non_blocking=True)
            yield Batch(self.normalizer(images), labels, idx.to(self.device, non_blocking=True))


def data_info_of(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(classes, channels, image size) of a `data:` section without loading the data."""
    name = cfg["dataset"]
    if name in CIFAR_FILES:
        return (100 if name == "cifar100" else 10), 3, 32
    if name == "digits":
        return 10, 1, 8
    if name == "synthetic":
        return int(cfg["classes"]), int(cfg["channels"]), int(cfg["image_size"])
    return int(cfg.get("classes") or 1000), 3, int(cfg.get("image_size") or 224)
