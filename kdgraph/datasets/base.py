"""What every dataset returns: splits of uint8 images (or image files) with labels, DataInfo, and their check.

A dataset declares what it yields (``Schema``: per-sample image shape and dtype, the number of
classes) and every load is held to it by one function, ``check_arrays``: as many labels as images,
integer labels in [0, classes), the declared image shape and dtype. ``load_dataset`` checks every
registered dataset's splits against the schema its ``info`` declares; a dataset that reads files
checks each file's arrays with the same function, so the error names the file and the key in it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError


@dataclass(frozen=True)
class DataInfo:
    """What the networks need to know of the data before they are built."""

    num_classes: int
    channels: int
    image_size: int
    # training samples, for per-sample state (CRD's memory bank); None when not known without loading.
    # Not compared: the loaded data's count fills it in where the `data:` section could not tell.
    num_train: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Schema:
    """What a dataset yields per sample: an image of ``image_shape`` and ``image_dtype``, a label in [0, classes)."""

    image_shape: tuple[int, ...]  # (C, H, W) of a split; a file format may declare its own rows (CIFAR: (3072,))
    classes: int
    image_dtype: str = "uint8"

    @classmethod
    def of(cls, info: DataInfo) -> Schema:
        """The schema a dataset's ``info`` declares: uint8 images C x H x W, labels below its class count."""
        return cls((info.channels, info.image_size, info.image_size), info.num_classes)


def _array(x: Any) -> np.ndarray:
    """A numpy view of a tensor or array (a list of labels becomes its array; ragged lists are refused)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, (list, tuple)) and not all(isinstance(v, (int, float, str, bytes, np.generic)) for v in x):
        raise ValueError("not a flat list of numbers")  # numpy would walk a nested (maybe shared) tree whole
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:  # a ragged or mixed list
        raise ValueError(f"not a flat array ({e})") from None


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(d) for d in shape) or "a scalar"


def check_arrays(
    images: Any,
    labels: Any,
    schema: Schema,
    where: str,
    fix: str,
    names: tuple[str, str] = ("images", "labels"),
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels as int64) once they hold what ``schema`` declares, else one DataError naming ``where``.

    ``where`` names the file (or dataset and split); ``names`` says where the two arrays sit in it
    (a CIFAR batch's keys); ``fix`` is what the user should do. A float label array is refused, not
    truncated; images of another dtype are refused, not wrapped into uint8.
    """

    def refuse(what: str) -> DataError:
        return DataError(f"{where}: {what}; {fix}")

    try:
        im, lab = _array(images), _array(labels)
    except ValueError as e:
        raise refuse(f"{names[0]} or {names[1]} are {e}") from None
    if lab.ndim != 1:
        raise refuse(f"{names[1]} have shape {_shape(lab.shape)}; labels are one class index per image")
    if im.ndim < 1 or len(im) != len(lab):
        n = len(im) if im.ndim else 0
        raise refuse(f"{n} images ({names[0]}) but {len(lab)} labels ({names[1]}): every image needs one label")
    if im.dtype != np.dtype(schema.image_dtype):
        raise refuse(f"{names[0]} are {im.dtype}, not {schema.image_dtype} (pixel values 0..255)")
    if tuple(im.shape[1:]) != tuple(schema.image_shape):
        got, want = _shape(tuple(im.shape[1:])), _shape(tuple(schema.image_shape))
        raise refuse(f"each image ({names[0]}) is {got}, not the declared {want}")
    if lab.dtype.kind not in "iu":
        raise refuse(f"{names[1]} are {lab.dtype}, not integers (class indices are never truncated)")
    if len(lab):
        low, high = int(lab.min()), int(lab.max())
        if low < 0 or high >= schema.classes:
            bad = low if low < 0 else high
            at = int(np.flatnonzero(lab == bad)[0])
            raise refuse(f"label {bad} (sample {at} of {names[1]}) is outside [0, {schema.classes})")
    return im, lab.astype(np.int64, copy=False)


def check_split(split: Split | FolderSplit, schema: Schema, where: str, fix: str) -> None:
    """``check_arrays`` of a loaded split (of an image folder, only the labels: its images are read per batch)."""
    if isinstance(split, FolderSplit):
        labels = np.fromiter((c for _, c in split.samples), dtype=np.int64, count=len(split.samples))
        shapes = np.broadcast_to(np.zeros((), schema.image_dtype), (len(labels), *schema.image_shape))  # no memory
        check_arrays(shapes, labels, schema, where, fix)
        return
    _, labels = check_arrays(split.images, split.labels, schema, where, fix)
    if split.labels.dtype != torch.int64:  # integer labels of another width: widened, not reinterpreted
        split.labels = torch.from_numpy(labels)


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
