"""What makes a folder a kdgraph run, what --force may delete in it, and who may write to it.

    write_marker(run_dir)                 # when kdgraph creates the run directory
    check_run_folder(run_dir)             # before a run or resume writes: no links out, not a pre-manifest run
    kept = clear_run(run_dir)             # --force: only the files its manifest lists, only in a marked folder
    with run_lock(run_dir): ...           # one process at a time trains or resumes in a folder

A folder is a run directory only when it holds ``.kdgraph-run`` (JSON with the format version);
names alone (a ``checkpoints/`` folder, a ``spec.yaml``) prove nothing, and --force refuses every
other folder. What --force deletes is decided by the folder's manifest (kdgraph/manifest.py), never by
names: a file kdgraph did not write, or changed since, stays and is named. A run folder written before
manifests existed is neither emptied by --force nor resumed (nothing proves which files are kdgraph's):
the refusal says to remove it by hand. The lock is an advisory ``flock`` on the folder itself: a second
``run``/``--resume`` on it is refused at once, and the kernel releases it when the process dies (even on
kill -9).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import KDGraphError, RunError
from .files import RUN_FILE, read_json, read_text
from .manifest import NAME as MANIFEST
from .manifest import Manifest
from .run_files import read_run_info as read_run_info_file

MARKER = ".kdgraph-run"
FORMAT = 1
# the names a run writes at its top (checked for links before a run writes; never a reason to delete)
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


# the files a new run writes at fixed names (a file kdgraph would keep there stops --force)
WRITTEN = ("spec.yaml", "run.json", "metrics.jsonl", "summary.json", "final.pt", "checkpoints/latest.json")


def write_marker(run_dir: Path) -> None:
    """Mark `run_dir` as kdgraph's (once: an existing marker is kept)."""
    marker = run_dir / MARKER
    if os.path.lexists(marker):
        return
    from . import __version__

    info = {"format": FORMAT, "kdgraph": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    Manifest(run_dir).write_new(marker, (json.dumps(info) + "\n").encode())


def marker_format(run_dir: Path) -> int | None:
    """The marker's format version, or None when `run_dir` has no (readable) marker."""
    try:
        info = read_json(run_dir / MARKER, RUN_FILE, within=run_dir)
    except KDGraphError:  # missing, not a regular file, a link out, not JSON: not a marker
        return None
    value = info.get("format") if isinstance(info, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def clear_run(run_dir: Path) -> list[str]:
    """--force: remove the files a run wrote, and nothing else; refuse a folder kdgraph did not create.

    Returns one "kept X: why" line per file left in place (a user's, or one changed since kdgraph wrote it).
    """
    version = marker_format(run_dir)
    if version is None:
        raise RunError(
            f"{run_dir} is not a kdgraph run directory (no {MARKER} marker); --force will not empty it. "
            "Choose another --out, or remove the folder yourself"
        )
    if version > FORMAT:
        raise RunError(f"{run_dir} was written by a newer kdgraph (run format {version}); --force will not touch it")
    if not Manifest(run_dir).exists():
        raise RunError(
            f"{run_dir} was written before kdgraph kept a manifest of its files ({MANIFEST}); --force deletes "
            f"only files a manifest lists, so it will not empty it. Remove it by hand (rm -r {run_dir}) or "
            "choose another --out"
        )
    with run_lock(run_dir):
        _refuse_in_the_way(run_dir)
        return remove_run_files(run_dir, keep_root=True)


def _refuse_in_the_way(run_dir: Path) -> None:
    """Before --force deletes anything: a file it would keep where the new run writes stops it (nothing lost)."""
    manifest = Manifest(run_dir)
    data = manifest.load()
    for rel in WRITTEN:
        if os.path.lexists(run_dir / rel) and (why := manifest.changed(rel, data)) is not None:
            raise RunError(
                f"{run_dir / rel} is {why}: the new run would write there, so --force stops before deleting "
                "anything. Move it away, or choose another --out"
            )


def remove_run_files(run_dir: Path, keep_root: bool = False) -> list[str]:
    """Delete the files the run folder's manifest lists and kdgraph still recognises; "kept X" lines for the rest."""
    if not Manifest(run_dir).exists():
        return []  # nothing is known to be kdgraph's: nothing is deleted
    return Manifest(run_dir).remove_all(keep_root=keep_root)


def check_run_folder(run_dir: Path) -> None:
    """Before a run or a resume writes in `run_dir`: refuse a run entry that is a link, and a pre-manifest run.

    A ``checkpoints`` linked into another run would have that run's files rotated away; a folder written
    before manifests has files kdgraph cannot prove it wrote, so it would have to overwrite them blind.
    """
    for name in RUN_ENTRIES:
        entry = run_dir / name
        if entry.is_symlink():
            raise RunError(
                f"{entry}: a symbolic link (to {os.readlink(entry)}); kdgraph writes only real files inside "
                f"{run_dir} and never through a link, so another run's files are not touched. Remove the link, "
                "or start a new run with another --out"
            )
    if (run_dir / MARKER).exists() and not Manifest(run_dir).exists():
        raise RunError(
            f"{run_dir} was written before kdgraph kept a manifest of its files ({MANIFEST}); this kdgraph cannot "
            f"tell its files from yours there, so it will not resume or overwrite it. Start a new run with another "
            f"--out, or remove it by hand (rm -r {run_dir})"
        )


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
