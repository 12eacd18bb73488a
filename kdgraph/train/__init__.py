"""Training: ``Trainer(check_graph(path), run_dir).run()``; per stage setup -> epochs -> end.

loop      the Trainer, stage by stage and epoch by epoch; evaluation; signals and NaN checks
step      TrainStep (forward, backward, update) and the on-device LossMeter
run_dir   run files, metrics.jsonl, atomic checkpoints and exact resume
init      init actions, dependency graphs and their cache; snapshots and fits
optim     the optimizer (a param group per node) and the lr per epoch
"""

from .init import CACHE_ENV, cache_root
from .loop import Interrupted, Position, Trainer
from .optim import build_optimizer, group_lr
from .run_dir import RUN_FILES, launched_processes, new_run_dir, use_cpu
from .step import LossMeter, TrainStep

__all__ = [
    "CACHE_ENV",
    "RUN_FILES",
    "Interrupted",
    "LossMeter",
    "Position",
    "TrainStep",
    "Trainer",
    "build_optimizer",
    "cache_root",
    "group_lr",
    "launched_processes",
    "new_run_dir",
    "use_cpu",
]
