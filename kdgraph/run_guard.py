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

from .errors import KDGraphError, RunError
from .files import RUN_FILE, read_json, read_text
from .run_files import read_run_info as read_run_info_file

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
        info = read_json(run_dir / MARKER, RUN_FILE, within=run_dir)
    except KDGraphError:  # missing, not a regular file, a link out, not JSON: not a marker
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


def read_run_info(run_dir: Path) -> tuple[str, list[str]]:
    """(graph file, overrides) of the run in `run_dir`, from run.json; RunError for anything else."""
    info_path = run_dir / "run.json"
    if not info_path.exists() and not info_path.is_symlink():
        raise RunError(f"{run_dir} is not a run directory (no run.json); start it with kdgraph run GRAPH --out DIR")
    info = read_run_info_file(run_dir, fix="; start a new run instead")  # bounded, each field typed
    if info.source is None:
        raise RunError(
            f"{info_path} is not what kdgraph writes (a graph file 'source' and a list of 'overrides'); "
            "start a new run instead"
        )
    return info.source, info.overrides


def check_spec_unchanged(run_dir: Path, resolved: str, spec_hash: str) -> None:
    """A paused run resumes from its graph file and overrides; an edited spec.yaml would be ignored: refuse.

    (A changed graph file changes the hash, which the checkpoint's own check reports.)
    """
    saved = run_dir / "spec.yaml"
    if not saved.exists() and not saved.is_symlink():
        return  # no copy to compare (an old run): the checkpoint's graph hash still guards the resume
    text = read_text(saved, RUN_FILE, within=run_dir)  # a FIFO, link out or non-UTF-8 copy: one RunError
    started = read_run_info_file(run_dir, fix="; start a new run instead").hash
    if started == spec_hash and text != resolved:
        raise RunError(
            f"{saved} was edited after the run started; a resume trains the graph it started with, so the edit "
            f"would be ignored. Undo the edit to resume, or train the edited graph as a new run: "
            f"kdgraph run {saved} --out NEW_DIR"
        )
