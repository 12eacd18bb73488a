"""Synthetic images: class prototypes plus noise, any size, for tests and smoke runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..registry import register_dataset
from .base import DataInfo, Dataset, DatasetSource, Split


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


@register_dataset("synthetic")
class Synthetic(DatasetSource):
    """Class prototypes plus noise: data.size/test_size samples of data.channels x image_size^2, data.classes."""

    def info(self, cfg: dict[str, Any], base_dir: Path) -> DataInfo:
        return DataInfo(int(cfg["classes"]), int(cfg["channels"]), int(cfg["image_size"]), int(cfg["size"]))

    def load(self, cfg: dict[str, Any], base_dir: Path, seed: int) -> Dataset:
        # data.seed holds the images fixed across train.seed (the seeds of one dataset, as on CIFAR)
        return _synthetic(cfg, int(cfg.get("seed", seed)))

    def files(self, cfg: dict[str, Any], base_dir: Path) -> list[Path]:
        """None: the samples follow from the settings (a cache key's dataset fingerprint)."""
        return []
