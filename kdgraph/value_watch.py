"""What a dry run on an empty batch (N = 0) cannot show: validate's cheap dry run asks here.

    reason = static_reason(graph)           # fits, plugins: None when the empty batch may decide
    with ValueWatch() as watch:
        probe(graph, batch=0)
    watch.reason                            # None: nothing in the run needed values

The real dry run (check.probe at N = 2, initialised weights) costs two forward and one backward pass
of every net (0.6 s of CPU for SLKD's four ResNets). On an empty batch every kernel still checks shapes,
dtypes and devices and the backward still runs, but nothing is computed, so what depends on values is
not seen. The real dry run decides (check.check_spec with ``weights=False``) when the empty one fails
(the message is then the real one's), or when there is any of:

* a stage that fits (a fit reads statistics of real data, e.g. KCD's matching solves on them);
* a node, loss or dataset from a plugin (its Python code may branch on values);
* an op that reads a value on the host (``.item()``, ``bool(t)``, ``float(t)``), or whose output shape
  or error depends on values (``nonzero``, masked indexing, ``unique``, BCE's range check, a
  decomposition that fails to converge);
* an index op (gather, scatter, index_select, t[i], cross entropy's target, embedding) whose indices
  come from the batch, into a dimension of fewer than 2 entries: the real dry run's labels are below
  min(2, classes) and its sample positions below 2, and the built-ins index only by those. (one_hot of
  an empty batch runs no op to watch; the built-in one, class_temperature, is sized by the data's classes.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:
    from .graph import DistillGraph

# ops whose result, shape or error depends on values: only a real batch shows them
_VALUE_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "nonzero_static",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "repeat_interleave",
    "bincount",
    "histc",
    "multinomial",
    "binary_cross_entropy",
    "cholesky",
    "linalg_cholesky_ex",
    "linalg_inv_ex",
    "_linalg_solve_ex",
    "_linalg_svd",
    "_linalg_eigh",
    "linalg_eig",
}

# op name -> (position of the indexed tensor, position of the dim argument or None, position of the index)
_INDEX_OPS = {
    "gather": (0, 1, 2),
    "scatter": (0, 1, 2),
    "scatter_": (0, 1, 2),
    "scatter_add": (0, 1, 2),
    "scatter_add_": (0, 1, 2),
    "scatter_reduce": (0, 1, 2),
    "scatter_reduce_": (0, 1, 2),
    "index_select": (0, 1, 2),
    "index_copy": (0, 1, 2),
    "index_copy_": (0, 1, 2),
    "index_add": (0, 1, 2),
    "index_add_": (0, 1, 2),
    "index_fill": (0, 1, 2),
    "index_fill_": (0, 1, 2),
    "embedding": (0, None, 1),
    "nll_loss_forward": (0, None, 1),
    "nll_loss2d_forward": (0, None, 1),
    "take": (0, None, 1),
}


def _indexed_size(name: str, args: tuple) -> int:
    pos, dim_pos, _ = _INDEX_OPS[name]
    t = args[pos]
    if name.startswith("nll_loss"):
        return t.shape[-1] if t.dim() == 1 else t.shape[1]  # the class dimension
    if name == "take":
        return t.numel()
    dim = 0 if dim_pos is None else int(args[dim_pos])
    return t.shape[dim]


class ValueWatch(TorchDispatchMode):
    """Runs every op unchanged; notes the first one whose checks need values that an empty batch lacks."""

    def __init__(self, reach: int = 2) -> None:
        super().__init__()
        self.reach = reach  # the real dry run's batch: every index it takes from the batch is below this
        self.reason: str | None = None

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # nothing runs under torch.compile here; else torch wraps __torch_dispatch__ in _disable_dynamo,
        # whose first call imports torch._dynamo (1.4 s, twice the dry run it watches)
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.reason is None:
            self.reason = self._needs_values(func, args)
        return func(*args, **(kwargs or {}))

    def _needs_values(self, func: Any, args: tuple) -> str | None:
        name = func._schema.name.split("::")[-1]
        if name in _VALUE_OPS:
            return f"{name} reads values"
        if name in _INDEX_OPS:
            index = args[_INDEX_OPS[name][2]]
            if isinstance(index, torch.Tensor) and index.numel() == 0 and _indexed_size(name, args) < self.reach:
                return f"{name} indexes a dimension of {_indexed_size(name, args)} by the batch"
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):  # t[i] and t[i] = v
            for dim, index in enumerate(args[1]):
                if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
                    return "masked indexing reads values"  # a mask's result has as many rows as it has True
                if isinstance(index, torch.Tensor) and index.numel() == 0 and args[0].shape[dim] < self.reach:
                    return f"{name} indexes a dimension of {args[0].shape[dim]} by the batch"
        return None


def static_reason(graph: DistillGraph) -> str | None:
    """Why the graph's dry run needs real values whatever its ops do: a stage that fits, or a plugin."""
    from .registry import DATASETS, LOSSES, NETS, OPS

    spec = graph.spec
    fitting = [s.name for s in graph.plan.stages if s.fit]
    if fitting:
        return f"stage {fitting[0]!r} fits on data"
    used = [(NETS if n.kind == "net" else OPS, n.type) for n in spec.nodes.values()]
    used += [(LOSSES, e.loss) for e in spec.edges]
    if spec.data.get("dataset") in DATASETS:
        used.append((DATASETS, spec.data["dataset"]))
    for registry, name in used:
        if not registry.get(name).module.startswith("kdgraph."):
            return f"{registry.kind} entry {name!r} is a plugin"
    return None
