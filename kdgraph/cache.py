"""Where kdgraph keeps what it can rebuild: trained dependency graphs (teachers) and small catalogues.

    $KDGRAPH_CACHE                   if set
    $XDG_CACHE_HOME/kdgraph          else, when XDG_CACHE_HOME is set
    ~/.cache/kdgraph                 else

One folder for every working directory, so a teacher trained once is reused from anywhere. Inside:
``<graph name>-<key>/`` per trained dependency (a run directory: run.json, final.pt, ..., and entry.json,
final.pt's SHA-256; the key: kdgraph/deps.py:entry_key) and
``meta/`` (the torchvision model catalogue, parameter counts) and ``outputs/<key>/`` (train.cache's stores
of frozen teachers' outputs, each with its ``cache.json``). ``kdgraph cache list`` shows them;
``kdgraph cache clear`` removes only these entries, never a file kdgraph did not write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "KDGRAPH_CACHE"
META = "meta"
OUTPUTS = "outputs"  # train.cache's file stores (kdgraph/output_cache.py)
RUN_MARKERS = ("run.json", "final.pt", "checkpoints")


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kdgraph"


def read_meta(name: str) -> Any | None:
    """A JSON catalogue kdgraph wrote earlier (None when absent or unreadable: it is rebuilt)."""
    try:
        return json.loads((cache_root() / META / name).read_text())
    except (OSError, ValueError):
        return None


def write_meta(name: str, value: Any) -> None:
    """Best effort, atomic (a read-only or full cache only costs the rebuild next time)."""
    folder = cache_root() / META
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
        os.replace(tmp, folder / name)
    except OSError:
        pass


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def entries() -> list[dict[str, Any]]:
    """The cache's entries kdgraph wrote: trained dependencies (folders with run files) and meta files."""
    root = cache_root()
    found: list[dict[str, Any]] = []
    if not root.is_dir():
        return found
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and any((child / m).exists() for m in RUN_MARKERS):
            done = (child / "final.pt").exists()
            found.append({"path": child, "kind": "graph" if done else "graph (unfinished)", "bytes": _size(child)})
    outputs = root / OUTPUTS
    if outputs.is_dir():
        for child in sorted(outputs.iterdir()):
            if child.is_dir() and not child.is_symlink() and (child / "cache.json").exists():
                found.append({"path": child, "kind": "teacher outputs", "bytes": _size(child)})
    meta = root / META
    if meta.is_dir():
        for f in sorted(meta.glob("*.json")):
            found.append({"path": f, "kind": "catalogue", "bytes": _size(f)})
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
    for e in found:  # clear: only entries kdgraph wrote (see entries())
        shutil.rmtree(e["path"]) if e["path"].is_dir() else e["path"].unlink()
    for folder in (root / META, root / OUTPUTS, root):
        try:
            folder.rmdir()  # only when empty: something else in it stays
        except OSError:
            pass
    print(f"removed {len(found)} entr{'y' if len(found) == 1 else 'ies'} from {root}")
    return 0
