"""Where kdgraph keeps what it can rebuild: trained dependency graphs (teachers) and small catalogues.

    $KDGRAPH_CACHE                   if set
    $XDG_CACHE_HOME/kdgraph          else, when XDG_CACHE_HOME is set
    ~/.cache/kdgraph                 else

One folder for every working directory, so a teacher trained once is reused from anywhere. Inside:
``<graph name>-<key>/`` per trained dependency (a run directory: run.json, final.pt, ..., and entry.json,
final.pt's SHA-256; the key: kdgraph/deps.py:entry_key) and
``meta/`` (the torchvision model catalogue, parameter counts) and ``outputs/<key>/`` (train.cache's stores
of frozen teachers' outputs, each with its ``cache.json``). ``kdgraph cache list`` shows them;
``kdgraph cache clear`` removes only what their manifests list (kdgraph/manifest.py), each file only when
it is still the one kdgraph wrote: never by folder or file names, never a file kdgraph did not write.
An entry written before manifests existed (a ``.kdgraph-run`` marker or ``cache.json`` but no manifest) is
listed but never removed; clear names it with ``rm -r`` to remove it by hand. An entry another process
holds (a teacher being trained) is left alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import KDGraphError
from .files import CACHE_META, read_json
from .manifest import LEGACY, Manifest

CACHE_ENV = "KDGRAPH_CACHE"
META = "meta"
OUTPUTS = "outputs"  # train.cache's file stores (kdgraph/output_cache.py)
# what an entry written before manifests held: it is listed (never removed) by these
LEGACY_MARKS = {"graph": ".kdgraph-run", "teacher outputs": "cache.json"}


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kdgraph"


def read_meta(name: str) -> Any | None:
    """A JSON catalogue kdgraph wrote earlier (None when absent or unreadable: it is rebuilt).

    Read through the bounded reader, so a FIFO, device, link out of the cache or garbage in its place is
    absent too (never a hang): write_meta then replaces it with a regular file.
    """
    root = cache_root()
    try:
        return read_json(root / META / name, CACHE_META, within=root)
    except KDGraphError:
        return None


def write_meta(name: str, value: Any) -> None:
    """Best effort, atomic (a read-only or full cache only costs the rebuild next time)."""
    folder = cache_root() / META
    try:
        manifest = Manifest(folder)
        manifest.make_root()
        manifest.write_atomic(folder / name, json.dumps(value).encode())
    except (OSError, KDGraphError):
        pass


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def _entry(folder: Path, kind: str) -> dict[str, Any] | None:
    """A cache folder as an entry: by its manifest, or (listed, never removed) an entry from before manifests."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    manifest = Manifest(folder)
    if not manifest.exists():
        legacy = (folder / LEGACY_MARKS[kind]).exists()
        return {"path": folder, "kind": f"{kind} (old)", "bytes": 0, "legacy": True} if legacy else None
    try:
        files = manifest.listed()
    except KDGraphError:
        return None  # a manifest kdgraph cannot read proves nothing
    if kind == "graph":
        kind = "graph" if folder / "final.pt" in files else "graph (unfinished)"
    return {"path": folder, "kind": kind, "bytes": _size(files), "legacy": False}


def entries() -> list[dict[str, Any]]:
    """The cache's entries kdgraph wrote, by their manifests: trained dependencies, teacher outputs, catalogues."""
    root = cache_root()
    found: list[dict[str, Any]] = []
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        if child.name not in (META, OUTPUTS) and (e := _entry(child, "graph")):
            found.append(e)
    outputs = root / OUTPUTS
    if outputs.is_dir() and not outputs.is_symlink():
        found += [e for child in sorted(outputs.iterdir()) if (e := _entry(child, "teacher outputs"))]
    meta = root / META
    if meta.is_dir() and not meta.is_symlink() and Manifest(meta).exists():
        try:
            listed = sorted(Manifest(meta).listed())
        except KDGraphError:
            listed = []
        found += [{"path": f, "kind": "catalogue", "bytes": _size([f]), "legacy": False} for f in listed]
    return found


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cmd_cache(args: Any) -> int:
    root = cache_root()
    found = entries()
    if args.action == "list":
        print(f"cache: {root}" + ("" if os.environ.get(CACHE_ENV) else f"   (set ${CACHE_ENV} to move it)"))
        for e in found:
            print(f"  {e['kind']:<18} {_human(e['bytes']):>9}  {e['path'].name}")
        print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'}, {_human(sum(e['bytes'] for e in found))}")
        return 0
    removed = 0
    for e in found:  # clear: only what each entry's manifest lists, each file only if still kdgraph's
        kept = _clear(e)
        removed += not kept
        for line in kept:
            print(line)
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {root}")
    return 0


def _clear(entry: dict[str, Any]) -> list[str]:
    """Remove one entry through its manifest; the "kept X: why" lines of what stays."""
    from .run_guard import run_lock

    path: Path = entry["path"]
    if entry["legacy"]:
        return [f"kept {path}: " + LEGACY.format(path=path)]
    if entry["kind"] == "catalogue":
        kept = Manifest(path.parent).remove([path])
        if not Manifest(path.parent).listed():
            kept += Manifest(path.parent).remove_all()
        return kept
    try:
        with run_lock(path):  # a teacher being trained there right now is not pulled from under it
            try:
                return Manifest(path).remove_all()
            except KDGraphError as e:  # e.g. a manifest kdgraph cannot read: nothing is deleted
                return [f"kept {path}: {e}"]
    except KDGraphError:
        return [f"kept {path}: in use by another kdgraph process"]
