"""The one reader of files kdgraph did not just write: regular files only, bounded by kind, kept in their folder.

    text = read_text(path, GRAPH)                          # SpecError naming the file when refused
    info = read_json(run_dir / "run.json", RUN_FILE, within=run_dir)
    with open_bounded(ckpt, CHECKPOINT) as fh:             # a binary stream for torch.load / np.load / PIL
        state = torch.load(fh, weights_only=True)

Every refusal is one line through the kind's error class (exit status 2): a missing file, a directory,
a FIFO, device or socket (opened with O_NONBLOCK and checked with fstat on the open descriptor, so a
FIFO never blocks and a file swapped between check and open is still checked), a file over the kind's
size bound, and, when ``within`` is given, a path whose symlinks resolve outside that folder (a run
folder's ``checkpoints`` linked into another run). A test greps the package: no other ``open()``,
``read_text``, ``read_bytes``, ``torch.load`` or ``np.load`` of a path a user can name.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointError, DataError, KDGraphError, Problem, RunError, SpecError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def _spec_error(path: str, message: str, hint: str | None, line: int | None = None) -> KDGraphError:
    return SpecError(Problem("", message, line, path, hint, kind="missing_file"))


def _plain(cls: type[KDGraphError]) -> Callable[..., KDGraphError]:
    def make(path: str, message: str, hint: str | None, line: int | None = None) -> KDGraphError:
        where = f"{path}:{line}" if line is not None else path
        return cls(f"{where}: {message}" + (f" ({hint})" if hint else ""))

    return make


@dataclass(frozen=True)
class FileKind:
    """What a file is to kdgraph: its name in messages, its size bound, the error that refuses it."""

    what: str  # "graph file", "checkpoint", ...
    max_bytes: int
    error: Callable[..., KDGraphError]  # (path, message, hint, line=None) -> the error to raise
    hint: str | None = None  # the fix when the file is not a regular file
    text_hint: str | None = None  # the fix when it is not UTF-8 text


GRAPH = FileKind("graph file", MiB, _spec_error, "name a .yaml file", "a graph file is YAML text")
PRESET = FileKind("preset file", MiB, _spec_error, "name a .yaml preset")
PLUGIN_LIST = FileKind("plugin list", MiB, _spec_error)
PLUGIN = FileKind("plugin file", 16 * MiB, _plain(RunError), "name a .py file")  # read once, hashed, then run
RUN_FILE = FileKind("run file", 16 * MiB, _plain(RunError))  # run.json, resolved.yaml, manifests
METRICS = FileKind("metrics file", 1 * GiB, _plain(RunError))  # metrics.jsonl of a long run
CHECKPOINT = FileKind("checkpoint", 64 * GiB, _plain(CheckpointError), "name a weights file")
CACHE_META = FileKind("cache file", 64 * MiB, _plain(DataError))  # cache.json, catalogues, filled.bin
STORE = FileKind("cache store", 1 << 40, _plain(DataError))  # train.cache's values files
DATASET = FileKind("dataset file", 64 * GiB, _plain(DataError), "name the dataset's folder")
IMAGE = FileKind("image", 256 * MiB, _plain(DataError))


def _refuse(path: Path, kind: FileKind, message: str, hint: str | None = None, line: int | None = None) -> KDGraphError:
    return kind.error(str(path), message, hint, line)


def check_within(path: Path, within: Path | None, kind: FileKind) -> Path:
    """`path` with symlinks resolved; refused when that leaves `within` (itself resolved)."""
    resolved = Path(os.path.realpath(path))
    if within is not None:
        root = Path(os.path.realpath(within))
        if resolved != root and root not in resolved.parents:
            raise _refuse(
                path,
                kind,
                f"{kind.what} resolves to {str(resolved)!r}, outside {str(root)!r}",
                "a link out of the folder is not followed; copy the file in instead",
            )
    return resolved


def _open_fd(path: Path, kind: FileKind, within: Path | None) -> tuple[int, int]:
    """An open read-only descriptor of a regular file within bounds, and its size."""
    resolved = check_within(path, within, kind)
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer forever
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise _refuse(path, kind, f"{kind.what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise _refuse(path, kind, f"{str(path)!r} is a directory, not a {kind.what}", kind.hint) from None
    except OSError as e:
        raise _refuse(path, kind, f"cannot read {kind.what}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _refuse(path, kind, f"{str(path)!r} is a directory, not a {kind.what}", kind.hint)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, kind, f"{str(path)!r} is not a regular file (a device, pipe or socket)", kind.hint)
        if info.st_size > kind.max_bytes:
            raise _refuse(path, kind, f"{kind.what} is {info.st_size:,} bytes; at most {kind.max_bytes:,} are read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def open_bounded(path: str | Path, kind: FileKind, within: str | Path | None = None) -> BinaryIO:
    """A binary stream of a regular file within the kind's bound (for torch.load, np.load, PIL, pickle)."""
    fd, _ = _open_fd(Path(path), kind, Path(within) if within is not None else None)
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, kind: FileKind, within: str | Path | None = None) -> bytes:
    """The whole file, at most ``kind.max_bytes`` (a file that grows after the check is cut and refused)."""
    path = Path(path)
    with open_bounded(path, kind, within) as fh:
        try:
            # the checked size, not the bound: read(n) allocates n bytes first (64 GiB for a checkpoint)
            size = min(os.fstat(fh.fileno()).st_size, kind.max_bytes)
            blob = fh.read(size + 1)
        except OSError as e:
            raise _refuse(path, kind, f"cannot read {kind.what}: {e.strerror or e}") from None
    if len(blob) > size:
        raise _refuse(path, kind, f"{kind.what} grew while it was read (over {size:,} bytes); read it again later")
    return blob


def read_text(path: str | Path, kind: FileKind, within: str | Path | None = None) -> str:
    """The file as UTF-8 text; a file that is not UTF-8 is refused with the line of the first bad byte."""
    blob = read_bytes(path, kind, within)
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        line = blob[: e.start].count(b"\n") + 1
        raise _refuse(Path(path), kind, f"not UTF-8 text (byte {e.start})", kind.text_hint, line) from None


def read_json(path: str | Path, kind: FileKind, within: str | Path | None = None) -> Any:
    """The file's JSON value; malformed JSON is refused with its line and column."""
    text = read_text(path, kind, within)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _refuse(Path(path), kind, f"not valid JSON ({e.msg}, column {e.colno})", None, e.lineno) from None
    except RecursionError:
        raise _refuse(Path(path), kind, "JSON nested too deeply") from None


def bytes_stream(path: str | Path, kind: FileKind, within: str | Path | None = None) -> io.BytesIO:
    """The whole file in memory as a stream (small files handed to a parser that wants one)."""
    return io.BytesIO(read_bytes(path, kind, within))
