"""Which checkpoint a resume reads: the one latest.json names, else the newest intact one.

    state, note = load_newest_intact(run_dir / "checkpoints")   # note: what was skipped, or None

Each checkpoint file is listed in the run folder's manifest with its SHA-256 (kdgraph/manifest.py) and
carries the start of that hash in its name (``step-000000040-3f2a...pt``), so it can be verified
without ``latest.json``: a garbage or missing pointer (a kill between the two renames of the first
checkpoint) or a damaged latest file falls back to the newest listed file whose bytes match the
manifest. A file the manifest does not list (copied in from another run, hand-made) is never loaded,
even when its name and latest.json agree with its bytes. Everything is loaded weights-only.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from .errors import CheckpointError, KDGraphError
from .files import CHECKPOINT, RUN_FILE, check_within, read_bytes, read_json
from .manifest import Manifest
from .safe_load import load_weights

HASH_CHARS = 16
NAME_RE = re.compile(r"^step-(\d{9})(?:\.(\d+))?(?:-([0-9a-f]{16}))?\.pt$")


def checkpoint_name(step: int, blob: bytes, digest: str | None = None) -> str:
    """``step-000000040-<16 hex of sha256>.pt``: the file can prove itself intact (`digest`: blob's, if known)."""
    return f"step-{step:09d}-{(digest or hashlib.sha256(blob).hexdigest())[:HASH_CHARS]}.pt"


def read_pointer(folder: Path) -> dict[str, Any] | None:
    """latest.json when it is a mapping naming a checkpoint file in `folder`; None when it is not."""
    try:  # bounded, and inside the run folder (a linked-out checkpoints/ is not read)
        meta = read_json(folder / "latest.json", RUN_FILE, within=folder.parent)
    except KDGraphError:
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("file"), str) or not NAME_RE.match(meta["file"]):
        return None  # also refuses a name that walks out of the folder ("../x.pt")
    if not isinstance(meta.get("sha256"), str):
        return None
    return meta


def read_checkpoint(path: Path, root: Path) -> bytes:
    """A checkpoint's bytes: a regular file inside the run folder `root` (never through a link out of it)."""
    return read_bytes(path, CHECKPOINT, within=root)


def _candidates(folder: Path, manifest: Manifest) -> list[Path]:
    """Checkpoint files the manifest lists, newest step first (then the later copy at one step)."""
    found = []
    for path in manifest.listed(folder):
        m = NAME_RE.match(path.name)
        if m and path.parent == folder and path.is_file() and not path.is_symlink():
            found.append(((int(m.group(1)), path.stat().st_mtime_ns, int(m.group(2) or 0)), path))
    return [p for _, p in sorted(found, reverse=True)]


def _verified(path: Path, sha256: str | None, manifest: Manifest) -> dict[str, Any] | None:
    """The state in `path` when the manifest lists its bytes (and they match `sha256`) and it loads; else None."""
    try:
        blob = read_checkpoint(path, manifest.root)
    except (KDGraphError, OSError):
        return None
    digest = hashlib.sha256(blob).hexdigest()
    m = NAME_RE.match(path.name)
    expected = sha256 or (m.group(3) if m else None)
    if expected is not None and not digest.startswith(expected):
        return None
    if not manifest.verified(path, blob):  # swapped in, or changed since kdgraph wrote it
        return None
    try:
        state = load_weights(blob, f"checkpoint {path}")
    except CheckpointError:
        return None
    return state if isinstance(state, dict) else None


def load_newest_intact(folder: Path, root: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """The checkpoint to resume from and, when it is not the one latest.json names, a line saying why.

    `root`: the run folder whose manifest lists the checkpoints (default: the folder above `folder`).
    """
    check_within(folder, folder.parent, CHECKPOINT)  # checkpoints/ linked into another run: refused, not read
    manifest = Manifest(root if root is not None else folder.parent)
    if not manifest.exists():
        raise CheckpointError(
            f"{manifest.root} has no manifest of the files kdgraph wrote (it was written before manifests "
            f"existed), so its checkpoints cannot be verified; start the run again in a new folder"
        )
    meta = read_pointer(folder)
    skipped: list[str] = []
    if meta is not None:
        named = folder / meta["file"]
        state = _verified(named, meta["sha256"], manifest)
        if state is not None:
            return state, None
        skipped.append(f"{meta['file']} (named by latest.json) is {'damaged' if named.exists() else 'missing'}")
    elif (folder / "latest.json").exists():
        skipped.append("latest.json is unreadable")
    else:
        skipped.append("latest.json was never written")
    for path in _candidates(folder, manifest):
        if meta is not None and path.name == meta["file"]:
            continue
        state = _verified(path, None, manifest)
        if state is not None:
            return state, f"{'; '.join(skipped)}: resuming from the newest intact checkpoint, {path.name}"
        skipped.append(f"{path.name} is damaged")
    raise CheckpointError(
        f"no intact checkpoint in {folder} ({'; '.join(skipped)}); start the run again with kdgraph run GRAPH "
        f"--out {folder.parent} --force"
    )
