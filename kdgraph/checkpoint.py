"""Atomic, verified checkpoints of a run: a crash at any moment leaves the last one intact.

Each checkpoint is written to a temporary file, flushed, fsync'ed and renamed into place; then
``latest.json`` (its name, size and SHA-256) is replaced the same way. A reader trusts only what
``latest.json`` names and checks the hash before loading. The previous checkpoint is kept until the
next one is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

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
    path = folder / f"step-{step:09d}.pt"
    n = 1
    while path.exists():
        path, n = folder / f"step-{step:09d}.{n}.pt", n + 1
    atomic_write_bytes(path, blob)
    meta = {"file": path.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "step": step}
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
    try:
        return json.loads((folder / "latest.json").read_text())["file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_checkpoint(folder: Path) -> bool:
    """Whether a run wrote any checkpoint into `folder` (a pointer, or checkpoint files)."""
    return (folder / "latest.json").exists() or any(folder.glob("step-*.pt"))


def load_latest(folder: Path) -> dict[str, Any]:
    """The checkpoint latest.json names, verified against its hash."""
    pointer = folder / "latest.json"
    if not pointer.exists():
        raise CheckpointError(f"no checkpoint in {folder} (latest.json is missing); start a new run instead")
    try:
        meta = json.loads(pointer.read_text())
        blob = (folder / meta["file"]).read_bytes()
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read the checkpoint named by {pointer}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint {folder / meta['file']} is corrupt (hash mismatch); restore it or start a new run"
        )
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


def save_file(path: Path, state: dict[str, Any]) -> None:
    """torch.save of any state, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
