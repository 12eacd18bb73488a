"""Optional experiment trackers through Accelerate's own tracker API: ``train.log_with: [tensorboard, wandb]``.

    train: {log_with: [tensorboard]}      # writes RUN_DIR/<graph name>/events.out.tfevents.*

Each metrics.jsonl record is also logged as scalars at its optimizer step: ``loss``, ``losses/<edge>``,
``lr/<param group>``, ``images_per_s``, ``top1/<port>``, ``top5/<port>``; the graph's vars, epochs and
batch size are the run's config. Trackers write under the run directory. Offline first: wandb runs with
``WANDB_MODE=offline`` unless you set WANDB_MODE or WANDB_API_KEY yourself (``wandb sync`` uploads later).
The trackers are optional extras: ``pip install 'kdgraph[tensorboard]'`` or ``'kdgraph[wandb]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RunError

if TYPE_CHECKING:
    from .spec import GraphSpec

TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")


def _available(name: str) -> bool:
    from accelerate import utils

    check = getattr(utils, f"is_{name}_available", None)
    return bool(check and check())


def accelerator_kwargs(spec: GraphSpec, run_dir: Path) -> dict[str, Any]:
    """The Accelerator's `log_with` and `project_dir` for the graph's trackers ({} when it names none)."""
    names = list(spec.train.get("log_with") or [])
    if not names:
        return {}
    missing = [n for n in names if not _available(n)]
    if missing:
        extras = ", ".join(f"'kdgraph[{n}]'" for n in missing)
        raise RunError(
            spec.problem(("train", "log_with"), f"tracker {', '.join(missing)} is not installed",
                         f"pip install {extras}, or remove it from train.log_with").format()
        )
    if "wandb" in names and not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")):
        os.environ["WANDB_MODE"] = "offline"  # no account, no network needed; `wandb sync` later
    return {"log_with": names, "project_dir": str(run_dir)}


def run_config(spec: GraphSpec) -> dict[str, Any]:
    """Scalars only (TensorBoard's hparams accept nothing else)."""
    config: dict[str, Any] = {"epochs": spec.train["epochs"], "batch_size": spec.data["batch_size"]}
    for name, value in (spec.doc.get("vars") or {}).items():
        if isinstance(value, (int, float, str, bool)):
            config[f"vars/{name}"] = value
    return config


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as flat scalars."""
    out: dict[str, float] = {}
    for key in ("loss", "images_per_s"):
        if isinstance(record.get(key), (int, float)):
            out[key] = float(record[key])
    for group in ("losses", "lr", "top1", "top5"):
        for name, value in (record.get(group) or {}).items():
            if isinstance(value, (int, float)):
                out[f"{group}/{name}"] = float(value)
    return out
