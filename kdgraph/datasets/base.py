"""What every dataset returns: splits of uint8 images (or image files) with labels, and DataInfo."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class DataInfo:
    """What the networks need to know of the data before they are built."""

    num_classes: int
    channels: int
    image_size: int
    # training samples, for per-sample state (CRD's memory bank); None when not known without loading.
    # Not compared: the loaded data's count fills it in where the `data:` section could not tell.
    num_train: int | None = field(default=None, compare=False)


@dataclass
class Split:
    images: torch.Tensor  # N x C x H x W, uint8
    labels: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class FolderSplit:
    """Image files on disk: (path, class index) pairs, decoded by the torchvision loader."""

    samples: list[tuple[str, int]]
    channels: int
    image_size: int

    def __len__(self) -> int:
        return len(self.samples)

    def to(self, device: torch.device | str) -> FolderSplit:
        return self  # decoded on the host, batch by batch


@dataclass
class Dataset:
    name: str
    train: Split | FolderSplit
    test: Split | FolderSplit
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        if isinstance(self.train, FolderSplit):
            return self.train.channels
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        if isinstance(self.train, FolderSplit):
            return self.train.image_size
        return int(self.train.images.shape[-1])

    @property
    def info(self) -> DataInfo:
        return DataInfo(self.num_classes, self.channels, self.image_size, len(self.train))


class DatasetSource:
    """The contract of a registered dataset (subclassing it is optional: the two methods are what counts)."""

    def info(self, cfg: dict[str, Any], base_dir: Path) -> DataInfo:
        """(classes, channels, image size) from the `data:` section, without loading the data."""
        raise NotImplementedError

    def load(self, cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
        """The train and test splits (`subset` is applied by the caller)."""
        raise NotImplementedError


def data_root(cfg: dict[str, Any], base_dir: Path) -> Path:
    root = cfg.get("root") or os.environ.get("KDGRAPH_DATA") or "data"
    path = Path(root).expanduser()
    return path if path.is_absolute() else (base_dir / path if cfg.get("root") else Path.cwd() / path)


def subset(split: Split | FolderSplit, n: int) -> Split | FolderSplit:
    if isinstance(split, FolderSplit):  # files are listed class by class: take every k-th for all classes
        step = max(1, len(split) // n)
        return FolderSplit(split.samples[::step][:n], split.channels, split.image_size)
    return Split(split.images[:n], split.labels[:n])
