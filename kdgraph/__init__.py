"""kdgraph: knowledge distillation methods as declarative graphs of networks, operations and losses."""

from .errors import CheckpointError, DataError, KDGraphError, NodeError, PlanError, SpecError
from .registry import DATASETS, LOSSES, NETS, OPS, PortInfo, register_dataset, register_loss, register_net, register_op

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "LOSSES",
    "NETS",
    "OPS",
    "PortInfo",
    "register_dataset",
    "register_loss",
    "register_net",
    "register_op",
    "CheckpointError",
    "DataError",
    "KDGraphError",
    "NodeError",
    "PlanError",
    "SpecError",
]
