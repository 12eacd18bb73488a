"""Image files in the torchvision ImageFolder layout: root/train/<class>/* and root/val/<class>/*."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError, first_line
from ..registry import register_dataset
from .base import DataInfo, Dataset, DatasetSource, FolderSplit, data_root

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _imagefolder(root: Path, image_size: int) -> Dataset:
    """``root/train/<class>/*`` and ``root/val/<class>/*`` (torchvision ImageFolder layout), RGB."""
    from torchvision.datasets import ImageFolder

    splits = []
    for part in ("train", "val"):
        where = root / part
        if not where.is_dir():
            raise DataError(f"imagefolder: {where} is not a folder; data.root must hold train/ and val/ class folders")
        try:
            folder = ImageFolder(str(where))
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"imagefolder: {where}: {first_line(e)}") from None
        splits.append(folder)
    train, val = splits
    if train.classes != val.classes:
        raise DataError(f"imagefolder: {root}/train and {root}/val have different class folders")
    return Dataset(
        "imagefolder",
        FolderSplit(list(train.samples), 3, image_size),
        FolderSplit(list(val.samples), 3, image_size),
        len(train.classes),
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


@register_dataset("imagefolder")
class ImageFolderData(DatasetSource):
    """Image files under data.root (train/ and val/, one folder per class), RGB, resized to data.image_size."""

    def info(self, cfg: dict[str, Any], base_dir: Path) -> DataInfo:
        # the classes are counted from root/train when it exists, else taken from data.classes
        classes = int(cfg.get("classes") or 1000)
        if cfg.get("root"):
            train = data_root(cfg, base_dir or Path.cwd()) / "train"
            if train.is_dir():
                classes = sum(1 for p in train.iterdir() if p.is_dir()) or classes
        return DataInfo(classes, 3, int(cfg.get("image_size") or 224))

    def load(self, cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
        if cfg.get("loader", "torchvision") != "torchvision":
            raise DataError("dataset 'imagefolder' streams images from disk: set data.loader: torchvision")
        return _imagefolder(data_root(cfg, base_dir), int(cfg.get("image_size") or 224))

    def files(self, cfg: dict[str, Any], base_dir: Path) -> list[Path]:
        """The folders it reads (a cache key's dataset fingerprint, kdgraph/fingerprint.py)."""
        return [data_root(cfg, base_dir) / "train", data_root(cfg, base_dir) / "val"]
