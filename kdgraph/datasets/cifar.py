"""CIFAR-10 and CIFAR-100 in the python pickle format of the official archives (downloaded only with data.download)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, first_line
from ..registry import register_dataset
from ..safe_pickle import UnsafePickleError, load_data_pickle
from .base import DataInfo, Dataset, DatasetSource, Schema, Split, check_arrays, data_root

CIFAR_MEAN = {"cifar100": (0.5071, 0.4867, 0.4408), "cifar10": (0.4914, 0.4822, 0.4465)}

CIFAR_STD = {"cifar100": (0.2675, 0.2565, 0.2761), "cifar10": (0.2470, 0.2435, 0.2616)}

CIFAR_FILES = {
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
}


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
                f"{name} is not under {where} and could not be downloaded ({first_line(e)}); put "
                f"{folder}/ there, or set data.root (or $KDGRAPH_DATA) to its parent folder"
            ) from None

    classes = 100 if name == "cifar100" else 10
    row = Schema((3 * 32 * 32,), classes)  # a batch file: N rows of 3072 uint8 (R, G, B planes) and N labels
    fix = f"replace it with the original {name} file (or delete it and set data.download: true)"

    def read_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
        try:
            entry = load_data_pickle(path)  # data, never code: numpy arrays and lists only
        except UnsafePickleError as e:
            raise DataError(f"{path} is refused: {e}; replace it with the original {name} file") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError) as e:
            raise DataError(f"{path} is not a readable {name} file ({first_line(e)}); {fix}") from None
        if not isinstance(entry, dict):
            raise DataError(f"{path} holds a {type(entry).__name__}, not a {name} batch (a dict); {fix}")
        for key in (b"data", label_key):
            if key not in entry:
                raise DataError(f"{path} has no key {key!r}, which a {name} batch holds; {fix}")
        return check_arrays(
            entry[b"data"], entry[label_key], row, str(path), fix, (f"key {b'data'!r}", f"key {label_key!r}")
        )

    def read(files: list[str]) -> Split:
        parts = [read_file(where / f) for f in files]
        images = np.concatenate([im for im, _ in parts]).reshape(-1, 3, 32, 32)
        return Split(torch.from_numpy(images), torch.from_numpy(np.concatenate([lab for _, lab in parts])))

    return Dataset(name, read(train_files), read(test_files), classes, CIFAR_MEAN[name], CIFAR_STD[name])


@register_dataset("cifar100")
class Cifar100(DatasetSource):
    """CIFAR-100: 50,000 train and 10,000 test images, 32x32 RGB, 100 classes."""

    name = "cifar100"

    def info(self, cfg: dict[str, Any], base_dir: Path) -> DataInfo:
        return DataInfo(100 if self.name == "cifar100" else 10, 3, 32, 50_000)

    def load(self, cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
        return _cifar(self.name, data_root(cfg, base_dir), bool(cfg.get("download", False)))

    def files(self, cfg: dict[str, Any], base_dir: Path) -> list[Path]:
        """The folder it reads (a cache key's dataset fingerprint, kdgraph/fingerprint.py)."""
        return [data_root(cfg, base_dir) / CIFAR_FILES[self.name][0]]


@register_dataset("cifar10")
class Cifar10(Cifar100):
    """CIFAR-10: 50,000 train and 10,000 test images, 32x32 RGB, 10 classes."""

    name = "cifar10"
