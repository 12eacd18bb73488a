"""The settings a graph file may leave out, and their values."""

from __future__ import annotations

from typing import Any

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4, "nesterov": False},
    "lr_schedule": {"type": "constant"},
    "precision": "fp32",
    "seed": 0,
    "eval": [],
    "eval_every": 1,
    "checkpoint_every": 500,
    "log_every": 50,
    "limit_batches": None,
    "limit_eval_batches": None,
    "channels_last": False,
    "compile": False,
    "cache": "off",
    "cache_fill": "auto",
    "fuse": "off",
    "on_nan": "stop",
    "grad_clip": None,
    "progress": True,
    "log_with": [],
}
DATA_DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic",
    "root": None,
    "download": False,  # a missing dataset is an error, never a silent multi-minute download
    "batch_size": 64,
    "eval_batch_size": None,
    "workers": 2,
    "augment": True,
    "drop_last": False,  # the reference loaders keep the last partial batch (782 steps at batch 64)
    "mean": None,  # normalisation: None = the dataset's statistics
    "std": None,
    "subset": None,
    "loader": "host",
    "size": 256,
    "test_size": 128,
    "image_size": 32,
    "channels": 3,
    "classes": 10,
}
