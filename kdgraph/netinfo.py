"""Parameter counts and ports of registered nets, for `kdgraph list nets`, cached per net's source file.

Counting needs a build (on the meta device, no memory), and building the 80 torchvision models needs
torchvision's multi-second import: the counts are kept in kdgraph's cache (``meta/net-info.json``),
each stamped with its module's file and the torch / torchvision versions, and rebuilt when a stamp changes.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import Any

from .cache import read_meta, write_meta
from .registry import Entry

CACHE_NAME = "net-info.json"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _stamp(entry: Entry) -> str:
    module = sys.modules.get(entry.module)
    file = getattr(module, "__file__", None)
    try:
        st = Path(file).stat() if file else None
    except OSError:
        st = None
    where = f"{file}:{st.st_mtime_ns}:{st.st_size}" if st else entry.module
    return f"{where}|torch {_version('torch')}|torchvision {_version('torchvision')}"


def _measure(entry: Entry) -> dict[str, Any]:
    from .meta import weightless
    from .nets.base import PortNet

    try:
        with weightless():
            net = entry.obj(**({"num_classes": 100} if "num_classes" in entry.parameters() else {}))
    except Exception as e:  # a net that cannot be built with defaults: say so, keep listing
        return {"error": str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}
    ports = list(net.port_info()) if isinstance(net, PortNet) else ["logits"]
    return {"params": sum(p.numel() for p in net.parameters()), "ports": ports}


def net_infos(entries: list[Entry]) -> dict[str, dict[str, Any]]:
    """{name: {"params": n, "ports": [...]} or {"error": why}} with 100 classes, from the cache where it is fresh."""
    cached = read_meta(CACHE_NAME)
    cached = cached if isinstance(cached, dict) else {}
    out, changed = {}, False
    for entry in entries:
        stamp = _stamp(entry)
        hit = cached.get(entry.name)
        if not (isinstance(hit, dict) and hit.get("stamp") == stamp):
            hit = {"stamp": stamp, **_measure(entry)}
            cached[entry.name], changed = hit, True
        out[entry.name] = hit
    if changed:
        write_meta(CACHE_NAME, cached)
    return out
