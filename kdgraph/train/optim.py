"""The optimizer (one param group per trainable node) and each group's lr per epoch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SpecError
from ..plan import StagePlan
from ..routes import routed_optimizer
from ..spec import merge

if TYPE_CHECKING:
    from ..graph import DistillGraph


def group_lr(base: float, cfg: dict[str, Any], epoch: int, epochs: int) -> float:
    """A group's lr at `epoch` (epochs count from 1; the lr is set once per epoch, as the reference code)."""
    kind = cfg.get("type", "constant")
    if kind == "step":  # x gamma once epoch > m, for each milestone m
        lr = base * float(cfg.get("gamma", 0.1)) ** sum(epoch > int(m) for m in cfg.get("milestones", []))
    elif kind == "cosine":
        floor = float(cfg.get("min_lr", 0.0))
        lr = floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))
    else:
        lr = base
    warmup = int(cfg.get("warmup", 0) or 0)
    if not warmup:
        return lr
    if int(cfg.get("warmup_origin", 1)) == 0:  # a LambdaLR counting epochs from 0 (ATS-LargeKD's WSKDLR)
        return lr * (epoch - 1 + 1e-6) / warmup if epoch - 1 <= warmup else lr
    return lr * min(1.0, epoch / warmup)


def build_optimizer(graph: DistillGraph, stage: StagePlan, train_cfg: dict[str, Any], device: torch.device):
    """One optimizer, one param group per trainable node (node `optim:` overrides the stage's)."""
    groups = []
    base_cfg = train_cfg["optimizer"]
    kind = base_cfg.get("type", "sgd")
    for name in stage.trainable:
        cfg = merge(base_cfg, graph.spec.nodes[name].optim)
        if cfg.get("type", kind) != kind:
            raise SpecError(
                [
                    graph.spec.problem(
                        ("nodes", name, "optim", "type"),
                        "a node's optimizer type must match the stage's",
                        f"use type {kind!r} or omit it",
                    )
                ]
            )
        group = {
            "params": [p for p in graph.nodes[name].parameters() if p.requires_grad],
            "name": name,
            "lr": float(cfg["lr"]),
            "base_lr": float(cfg["lr"]),
            "weight_decay": float(cfg.get("weight_decay", 0.0)),
        }
        if kind == "sgd":
            group.update(momentum=float(cfg.get("momentum", 0.0)), nesterov=bool(cfg.get("nesterov", False)))
        else:
            group.update(betas=tuple(float(b) for b in cfg.get("betas", (0.9, 0.999))), eps=float(cfg.get("eps", 1e-8)))
        groups.append(group)
    impl = base_cfg.get("impl", "auto")
    flags: dict[str, Any] = {}
    if impl == "fused":
        flags["fused"] = True
    elif impl == "foreach":
        flags["foreach"] = True
    elif impl == "for-loop":
        flags["foreach"] = False
    elif device.type == "cuda":
        flags["fused"] = True
    if not groups:
        empty = torch.zeros(0, device=device, requires_grad=True)  # on the device: fused kernels check it
        groups = [{"params": [empty], "name": "_empty", "lr": 0.0, "base_lr": 0.0}]
    if base_cfg.get("routes"):  # DOT's per-route momenta (kdgraph/routes.py)
        return routed_optimizer(groups, base_cfg)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    return cls(groups, lr=float(base_cfg["lr"]), **flags)
