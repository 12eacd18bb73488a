"""Atomic, verified checkpoints of a run: a crash at any moment leaves the last one intact.

Each checkpoint is written to a temporary file, flushed, fsync'ed and renamed into place; then
``latest.json`` (its name, size and SHA-256) is replaced the same way. Both are recorded in the run
folder's manifest (kdgraph/manifest.py) with their SHA-256: a reader loads only a file the manifest
lists with matching bytes, the one ``latest.json`` names, else the newest other one (see
checkpoint_fallback), so a swapped or tampered file is never loaded. The previous checkpoint is kept
until the next one is complete; older ones are removed through the manifest, never by their names.
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

from .checkpoint_fallback import NAME_RE, checkpoint_name, load_newest_intact, read_pointer
from .errors import CheckpointError, RunError
from .manifest import Manifest, fsync_dir


def atomic_write_bytes(path: Path, blob: bytes, root: Path | None = None, grows: bool = False) -> None:
    """Write `blob` to `path` so that `path` is always either the old file or the whole new one.

    `root`: the run folder whose manifest records the file (a link or a user's file in the way is refused);
    `grows`: it will be appended to, so it is recorded by inode instead of by hash.
    """
    if root is not None:
        try:
            Manifest(root).write_atomic(path, blob, grows)
        except OSError as e:
            raise RunError(f"could not write {path} ({e.strerror or e}); the previous checkpoint is kept") from None
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RunError(f"could not write {path} ({e.strerror or e}); the previous checkpoint is kept") from None


def save_checkpoint(folder: Path, state: dict[str, Any], step: int, root: Path | None = None, log: Any = None) -> Path:
    """Save `state` as a checkpoint of `step`, point latest.json at it, keep it and the one before.

    A new file never replaces the one latest.json names (two saves at one step get two names), so
    a crash between writing the file and repointing latest.json leaves the old pair consistent.
    `root` is the run folder whose manifest records them (default: the folder above `folder`); older
    checkpoints are deleted only when that manifest lists them unchanged (each other one is said to `log`).
    """
    root = Path(root) if root is not None else folder.parent
    manifest = Manifest(root, log)
    manifest.mkdir(folder)
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    previous = _pointed(folder)
    digest = hashlib.sha256(blob).hexdigest()  # once: the name and latest.json both carry it
    path = folder / checkpoint_name(step, blob, digest)  # same bytes, same name: never a different file under it
    if not manifest.verified(path):
        atomic_write_bytes(path, blob, root=root)
    meta = {"file": path.name, "bytes": len(blob), "sha256": digest, "step": step}
    if previous:
        meta["previous"] = previous
    atomic_write_bytes(folder / "latest.json", json.dumps(meta).encode(), root=root)
    keep = {path.name, previous}
    old = [p for p in manifest.listed(folder) if NAME_RE.match(p.name) and p.name not in keep]
    for line in manifest.remove(old) + manifest.remove_temps():  # temporaries: left by a killed process
        manifest.log(line)
    return path


def _pointed(folder: Path) -> str | None:
    """The file latest.json names now, if it is readable."""
    meta = read_pointer(folder)
    return meta["file"] if meta else None


def has_checkpoint(folder: Path) -> bool:
    """Whether a run wrote any checkpoint into `folder` (a pointer, or checkpoint files)."""
    return (folder / "latest.json").exists() or any(folder.glob("step-*.pt"))


def load_latest(folder: Path, log: Any = None, root: Path | None = None) -> dict[str, Any]:
    """The checkpoint latest.json names, verified against the manifest; else the newest intact one (said to `log`)."""
    if not has_checkpoint(folder):
        raise CheckpointError(f"no checkpoint in {folder} (latest.json is missing); start a new run instead")
    state, note = load_newest_intact(folder, root)
    if note and log:
        log(note)
    return state


def save_file(path: Path, state: dict[str, Any], root: Path | None = None) -> None:
    """torch.save of any state, atomically (recorded in `root`'s manifest when given)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue(), root=root)
