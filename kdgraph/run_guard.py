"""What makes a folder a kdgraph run, what --force may delete in it, and who may write to it.

    write_marker(run_dir)                 # when kdgraph creates the run directory
    clear_run(run_dir)                    # --force: only the entries a run writes, only in a marked folder
    with run_lock(run_dir): ...           # one process at a time trains or resumes in a folder

A folder is a run directory only when it holds ``.kdgraph-run`` (JSON with the format version);
names alone (a ``checkpoints/`` folder, a ``spec.yaml``) prove nothing, and --force refuses every
other folder. The lock is an advisory ``flock`` on the folder itself: a second ``run``/``--resume``
on it is refused at once, and the kernel releases it when the process dies (even on kill -9).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import RunError

MARKER = ".kdgraph-run"
FORMAT = 1
# everything a run writes (the marker last: a folder half-cleared is still recognised)
RUN_ENTRIES = (
    "run.json",
    "spec.yaml",
    "metrics.jsonl",
    "checkpoints",
    "stage_ends",
    "snapshots",
    "summary.json",
    "final.pt",
    MARKER,
)


def write_marker(run_dir: Path) -> None:
    """Mark `run_dir` as kdgraph's (once: an existing marker is kept)."""
    marker = run_dir / MARKER
    if marker.exists():
        return
    from . import __version__

    info = {"format": FORMAT, "kdgraph": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    marker.write_text(json.dumps(info) + "\n")


def marker_format(run_dir: Path) -> int | None:
    """The marker's format version, or None when `run_dir` has no (readable) marker."""
    try:
        info = json.loads((run_dir / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    value = info.get("format") if isinstance(info, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def clear_run(run_dir: Path) -> None:
    """--force: remove the files a run wrote, and nothing else; refuse a folder kdgraph did not create."""
    version = marker_format(run_dir)
    if version is None:
        raise RunError(
            f"{run_dir} is not a kdgraph run directory (no {MARKER} marker); --force will not empty it. "
            "Choose another --out, or remove the folder yourself"
        )
    if version > FORMAT:
        raise RunError(f"{run_dir} was written by a newer kdgraph (run format {version}); --force will not touch it")
    with run_lock(run_dir):
        remove_run_files(run_dir)


def remove_run_files(run_dir: Path) -> None:
    """Delete the entries a run writes (RUN_ENTRIES and its temporary files); leave anything else."""
    for name in RUN_ENTRIES:
        target = run_dir / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
    for stale in run_dir.glob(".*.tmp-*"):  # an atomic write interrupted by a kill
        if stale.is_file():
            stale.unlink()


@contextmanager
def run_lock(run_dir: Path, wait: bool = False, log: Any = None) -> Iterator[None]:
    """Hold the folder's advisory lock; RunError at once when another process holds it (or wait)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            if not wait:
                raise RunError(
                    f"{run_dir} is in use by another kdgraph process (it holds the run's lock); "
                    "wait for it to finish or stop it, or choose another --out"
                ) from None
            if log:
                log(f"  waiting for another process to finish {run_dir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
