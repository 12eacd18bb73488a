"""`kdgraph eval RUN_DIR|model.pt --data NAME`: top-1 / top-5 of a deployed model on a test split.

A run directory is exported in memory first (its deploy slice, as ``kdgraph export`` writes it); a
``model.pt`` is loaded as exported. Images go in as the dataset gives them (uint8) and the model
applies the normalisation of the run that trained it (``preprocess.RawImages``), so any dataset with
the same image format can be scored. Without ``--data`` a run directory is scored on its own data.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import RunError
from .plugin_trust import NO_PLUGINS, PluginChoice, choice_of


def _model_and_data(target: Path, plugins: PluginChoice = NO_PLUGINS) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The deployed model and (for a run) its data section; plugins only as `plugins` allows."""
    from .export import _read_final, export_run, exported_module

    if target.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            export_run(target, Path(tmp) / "model.pt", torchscript=False, plugins=plugins)
            model = exported_module(Path(tmp) / "model.pt", plugins, raw=True)
        return model, dict(_read_final(target)["spec"].get("data") or {})
    if not target.exists() and not target.is_symlink():  # a FIFO or device: the bounded reader says so
        raise RunError(f"{target}: neither a run directory nor an exported model.pt")
    return exported_module(target, plugins, raw=True), None


@torch.no_grad()
def score(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> dict:
    """Top-1 / top-5 (%) over (images uint8, labels)."""
    model.eval()
    hits1 = hits5 = 0
    for i in range(0, len(labels), batch_size):
        out = model(images[i : i + batch_size]).float()
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hit = top == labels[i : i + batch_size, None]
        hits1 += int(hit[:, 0].sum())
        hits5 += int(hit.any(dim=1).sum())
    n = max(len(labels), 1)
    return {"top1": 100 * hits1 / n, "top5": 100 * hits5 / n, "images": len(labels)}


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .spec import DATA_DEFAULTS, merge

    model, run_data = _model_and_data(Path(args.target), choice_of(args))
    if args.data is None and run_data is None:
        raise RunError("an exported model.pt does not say which data to score: give --data NAME (e.g. digits)")
    cfg = merge(DATA_DEFAULTS, run_data or {})
    if args.data:
        cfg = merge(DATA_DEFAULTS, {"dataset": args.data})
    if args.root:
        cfg["root"] = str(Path(args.root).resolve())
    dataset = load_dataset(cfg, Path.cwd())
    test = dataset.test
    if not hasattr(test, "images"):
        kinds = "cifar10, cifar100, digits, synthetic"
        raise RunError(f"kdgraph eval reads in-memory datasets ({kinds}), not {cfg['dataset']}")
    result = score(model, test.images, test.labels, args.batch_size)
    print(
        f"{args.target}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
        f"({result['images']} test images of {cfg['dataset']})"
    )
    return 0
