"""Atomic, verified checkpoints of a run: a crash at any moment leaves the last one intact.

Each checkpoint is written to a temporary file, flushed, fsync'ed and renamed into place; then
``latest.json`` (its name, size and SHA-256) is replaced the same way. A reader trusts what
``latest.json`` names after checking the hash, else the newest file whose bytes match the hash in
its name (see checkpoint_fallback). The previous checkpoint is kept until the next one is complete.
Everything is read weights-only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint_fallback import checkpoint_name, load_newest_intact, read_pointer
from .errors import CheckpointError, RunError


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """Write `blob` to `path` so that `path` is always either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path} ({e.strerror or e}); the previous checkpoint is kept") from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, state: dict[str, Any], step: int) -> Path:
    """Save `state` as a checkpoint of `step`, point latest.json at it, keep it and the one before.

    A new file never replaces the one latest.json names (two saves at one step get two names), so
    a crash between writing the file and repointing latest.json leaves the old pair consistent.
    """
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    previous = _pointed(folder)
    digest = hashlib.sha256(blob).hexdigest()  # once: the name and latest.json both carry it
    path = folder / checkpoint_name(step, blob, digest)  # same bytes, same name: never a different file under it
    if not path.exists():
        atomic_write_bytes(path, blob)
    meta = {"file": path.name, "bytes": len(blob), "sha256": digest, "step": step}
    if previous:
        meta["previous"] = previous
    atomic_write_bytes(folder / "latest.json", json.dumps(meta).encode())
    keep = {path.name, previous}
    for old in folder.glob("step-*.pt"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp-*"):  # left by a process killed mid-write
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path


def _pointed(folder: Path) -> str | None:
    """The file latest.json names now, if it is readable."""
    meta = read_pointer(folder)
    return meta["file"] if meta else None


def has_checkpoint(folder: Path) -> bool:
    """Whether a run wrote any checkpoint into `folder` (a pointer, or checkpoint files)."""
    return (folder / "latest.json").exists() or any(folder.glob("step-*.pt"))


def load_latest(folder: Path, log: Any = None) -> dict[str, Any]:
    """The checkpoint latest.json names, verified against its hash; else the newest intact one (said to `log`)."""
    if not has_checkpoint(folder):
        raise CheckpointError(f"no checkpoint in {folder} (latest.json is missing); start a new run instead")
    state, note = load_newest_intact(folder)
    if note and log:
        log(note)
    return state


def save_file(path: Path, state: dict[str, Any]) -> None:
    """torch.save of any state, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
