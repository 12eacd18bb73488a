"""scikit-learn's 8x8 handwritten digits: bundled, so a real dataset needs no download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry import register_dataset
from .base import DataInfo, Dataset, DatasetSource, Split


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


@register_dataset("digits")
class Digits(DatasetSource):
    """scikit-learn's 1,797 handwritten digits, 8x8 grey, 10 classes (1,437 train / 360 test, fixed split)."""

    def info(self, cfg: dict[str, Any], base_dir: Path) -> DataInfo:
        return DataInfo(10, 1, 8, 1437)

    def load(self, cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
        return _digits()

    def files(self, cfg: dict[str, Any], base_dir: Path) -> list[Path]:
        """scikit-learn's bundled file (a cache key's dataset fingerprint), found without importing it."""
        from importlib.util import find_spec

        spec = find_spec("sklearn")
        origin = spec.origin if spec else None
        return [Path(origin).parent / "datasets" / "data" / "digits.csv.gz"] if origin else []
