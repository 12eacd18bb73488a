"""The identity of a dataset as a cache key sees it: its settings and every file it reads, by stat.

    dataset_fingerprint(spec.data, spec.base_dir)   # 'a3f0...': equal only for the same settings and files

One function for both caches that outlive a run: train.cache's output stores (kdgraph/train/cache.py)
and trained dependencies (``init: {from:}``, kdgraph/deps.py). A teacher trained on one project's
``./data`` must never be reused for another project's, and a sample of the files is not enough (a
changed file the sample skips is a silent miss), so every file under the dataset's folders is listed.

What it covers: the dataset's name and its ``data:`` settings that change the samples (subset, seed,
augment, views, normalisation; not batch sizes, workers or where the folder is named from), and for
every regular file under the paths the dataset reads (a registered dataset's ``files(cfg, base_dir)``,
else the whole data root) its path relative to that root, size, mtime in nanoseconds and inode. The
inode makes two copies of one dataset two datasets to the cache: a copy costs a retrain, never a
wrong reuse (two files of equal size written within one clock tick would otherwise look alike); point
``$KDGRAPH_DATA`` at one copy to share teachers between projects.

It reads no file's bytes (stat only: CIFAR's folder in microseconds, a million-image folder in about
a second); a process remembers the answer for a folder of over 10,000 files while the dataset's
top-level paths are unchanged (a smaller one is listed again each time).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# data settings that never change which samples a net sees (batch sizes, workers, where the folder is named)
DATA_IRRELEVANT = ("batch_size", "eval_batch_size", "workers", "loader", "drop_last", "download", "root")

_memo: dict[tuple, str] = {}
_MEMO_FILES = 10_000  # a tree of more files is listed once per process


def digest(value: Any) -> str:
    """A stable SHA-256 of a JSON-able value (sorted keys), in hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def file_identity(path: Path) -> list[Any] | None:
    """(size, mtime_ns, inode) of a file (a symlink: of its target, what is read); None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def tree_identity(root: Path) -> list[list[Any]]:
    """[relative path, size, mtime_ns, inode] of every regular file under `root` (or of `root` itself), sorted.

    Symlinks are listed by their target's stat (a linked dataset is the files it links to), and folders
    reached through a symlink are not entered twice (a cycle of links ends)."""
    if root.is_file():
        st = root.stat()
        return [[root.name, st.st_size, st.st_mtime_ns, st.st_ino]]
    found: list[list[Any]] = []
    seen: set[tuple[int, int]] = set()
    stack = [(root, "")]
    while stack:
        folder, rel = stack.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: the dataset's own loader reports it
        for entry in entries:
            name = f"{rel}{entry.name}"
            try:
                if entry.is_dir():
                    stack.append((Path(entry.path), f"{name}/"))
                elif entry.is_file():
                    st = entry.stat()
                    found.append([name, st.st_size, st.st_mtime_ns, st.st_ino])
            except OSError:
                continue
    return sorted(found)


def dataset_paths(cfg: dict[str, Any], base_dir: Path) -> list[Path]:
    """The files and folders the dataset `cfg` names reads (its ``files`` hook, else the whole data root)."""
    from .catalog import load_builtins
    from .datasets.base import data_root
    from .registry import DATASETS

    load_builtins()
    name = cfg.get("dataset")
    source = DATASETS.get(name).obj() if name in DATASETS else None
    files = getattr(source, "files", None)
    return list(files(cfg, base_dir)) if callable(files) else [data_root(cfg, base_dir)]


def dataset_fingerprint(data_spec: dict[str, Any], base_dir: Path) -> str:
    """A hex digest of the dataset's settings and of every file it reads (size, mtime, inode), per process."""
    settings = {k: v for k, v in data_spec.items() if k not in DATA_IRRELEVANT}
    paths = [p.resolve() for p in dataset_paths(data_spec, base_dir)]
    memo_key = (digest(settings), *((str(p), tuple(file_identity(p) or ())) for p in paths))
    if memo_key in _memo:
        return _memo[memo_key]
    files = [tree_identity(p) if p.exists() else None for p in paths]
    found = digest({"settings": settings, "files": files})
    if sum(len(f or ()) for f in files) > _MEMO_FILES:
        _memo[memo_key] = found
    return found
