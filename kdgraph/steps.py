"""A run that would take no optimizer step is refused before it starts.

Every stage with loss edges at 0 epochs, or a training split too small for one batch when
``data.drop_last`` drops the partial one (a ``subset`` smaller than ``batch_size``), would "train"
without changing a weight and report the untrained network's accuracy as the result.
A graph with no loss edge at all (an exported model's graph) trains nothing by design.
"""

from __future__ import annotations

from .datasets.base import DataInfo
from .errors import Problem
from .spec import GraphSpec


def step_problems(spec: GraphSpec, info: DataInfo) -> list[Problem]:
    """One located problem when the run as configured takes zero optimizer steps."""
    trained = [s for s in spec.stages if s.edges]
    if not trained:
        return []
    if all(s.epochs == 0 for s in trained):
        staged = bool(spec.doc.get("stages"))
        path = ("stages", trained[0].index, "epochs") if staged else ("train", "epochs")
        what = "every stage with loss edges has epochs: 0" if staged else "train.epochs is 0"
        return [spec.problem(path, f"the run would take no optimizer step: {what}", "train for at least 1 epoch")]
    n, subset = info.num_train, spec.data.get("subset")
    if isinstance(subset, int):
        n = subset if n is None else min(n, subset)
    batch = spec.data.get("batch_size")
    if n is not None and isinstance(batch, int) and spec.data.get("drop_last") and n < batch:
        return [
            spec.problem(
                ("data", "batch_size"),
                f"the run would take no optimizer step: {n} training samples make no full batch of {batch} "
                "and data.drop_last drops the partial one",
                f"lower data.batch_size to at most {n}, or set data.drop_last: false",
            )
        ]
    return []
