"""`kdgraph plan`'s memory estimate, kept in kdgraph's cache per resolved graph, batch and source files.

    stages = cached_estimate(spec, info, batch)     # memory.estimate_memory's answer, computed once

The estimate runs a step on fake tensors, and torch's FakeTensorMode imports torch._dynamo (1.4 s on
a 2-core machine) before the two steps themselves: a plan takes 2.5 x `import torch` cold. The answer is
a function of the resolved graph (``dump_resolved``), the data's shape, the batch, torch's version and
the code that builds and runs the graph, so it is stored (``meta/memory-estimates.json``) under a key of
all of these: every kdgraph source file and each plugin file the graph uses, by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import read_meta, write_meta
from .memory import NodeMemory, StageMemory, estimate_memory

if TYPE_CHECKING:
    from .datasets.base import DataInfo
    from .spec import GraphSpec

CACHE_NAME = "memory-estimates.json"
KEEP = 64  # entries; the oldest go first
PACKAGE = Path(__file__).resolve().parent


def _sources(spec: GraphSpec) -> list[str]:
    """Every kdgraph source file and the plugin files of the graph's nets, ops and losses, stamped."""
    from .registry import LOSSES, NETS, OPS

    files = sorted(PACKAGE.rglob("*.py"))
    entries = [(NETS if n.kind == "net" else OPS).get(n.type) for n in spec.nodes.values()]
    entries += [LOSSES.get(e.loss) for e in spec.edges]
    for entry in entries:
        file = getattr(sys.modules.get(entry.module), "__file__", None)
        if file and not Path(file).resolve().is_relative_to(PACKAGE):
            files.append(Path(file))
    stamps = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        stamps.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return stamps


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _key(spec: GraphSpec, info: DataInfo, batch: int | None) -> str:
    from .spec import dump_resolved

    versions = [f"{p} {_version(p)}" for p in ("torch", "torchvision")]  # tv/ nets are built by torchvision
    parts = [dump_resolved(spec), repr(info), str(batch), *versions, *_sources(spec)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _stages(rows: list[dict[str, Any]]) -> list[StageMemory]:
    return [StageMemory(**{**r, "nodes": [NodeMemory(**n) for n in r["nodes"]]}) for r in rows]


def cached_estimate(spec: GraphSpec, info: DataInfo, batch: int | None = None) -> list[StageMemory]:
    """memory.estimate_memory(spec, info, batch), from the cache when this graph and code were estimated before."""
    key = _key(spec, info, batch)
    store = read_meta(CACHE_NAME)
    store = store if isinstance(store, dict) else {}
    hit = store.get(key)
    if isinstance(hit, list):
        try:
            return _stages(hit)
        except (TypeError, KeyError):  # written by another version: estimate again
            pass
    stages = estimate_memory(spec, info, batch)
    store.pop(key, None)
    store[key] = [asdict(s) for s in stages]  # dicts keep insertion order: the newest last
    write_meta(CACHE_NAME, dict(list(store.items())[-KEEP:]))
    return stages
