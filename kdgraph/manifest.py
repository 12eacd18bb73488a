"""What kdgraph wrote in a folder, so that it deletes, replaces and loads only that.

    m = Manifest(run_dir)                      # a run folder, a cache entry, the cache's meta/ folder
    m.make_root(); m.mkdir(run_dir / "checkpoints")
    m.write_atomic(path, blob)                 # temp file + fsync + rename, recorded with its SHA-256
    m.write_new(path, blob)                    # small files (run.json, spec.yaml): recorded the same way
    with m.open_append(metrics) as fh: ...     # a file that grows: recorded by device and inode
    kept = m.remove(paths) / m.remove_all()    # delete only listed files that are still kdgraph's

Every file kdgraph writes into a run folder or a cache entry is recorded in ``.kdgraph-manifest.json``
at that folder's top (written to a temporary file, fsync'ed and renamed: a crash leaves the old or the
new manifest whole). A file written whole is recorded with its size and SHA-256 (kdgraph hashes the
bytes it has in memory anyway, so writing costs nothing more) plus its device, inode and mtime; a
file that still matches size, inode and mtime is taken as unchanged without hashing, any other is
hashed before kdgraph trusts it. A file kdgraph keeps writing into (metrics.jsonl, which grows every
step; the memory-mapped stores of train.cache) cannot be hashed on every write: it is recorded by
device and inode, so a file put in its place is never taken for it. A temporary file is recorded
(by inode) before a byte is written, so one left by a killed process is still known and removed.

kdgraph deletes only a file the manifest lists and that is still the file it wrote; anything else, a
file changed since, a user's file, a symbolic link, stays and is named in one line ("kept X: ...").
A directory is removed only when kdgraph created it and it is empty. Writes never go through a
symbolic link: every folder between the manifest's folder and the file must be a real folder, so a
``checkpoints`` linked into another run is refused, never followed. A listed file whose bytes no longer
match is never loaded (``verified``): a swapped or tampered checkpoint is skipped.

Folders written before manifests existed (a ``.kdgraph-run`` marker or ``cache.json`` but no manifest)
are listed by ``kdgraph cache list`` but never deleted, replaced or resumed: nothing proves which of
their files kdgraph wrote. kdgraph names them with the command to remove them by hand (``rm -r DIR``).
The manifest is changed only by the process that holds the folder (a run's lock); a record lost to a
race only means a file is kept, never that a wrong one is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from .errors import KDGraphError, RunError
from .files import STORE, open_bounded

NAME = ".kdgraph-manifest.json"
FORMAT = 1
CHANGED = "changed since kdgraph wrote it"
_SHOWN = 20  # kept files named one by one, then a count
LEGACY = (
    "written before kdgraph kept a manifest of its files; remove it by hand (rm -r {path}) if it is yours to delete"
)


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in chunks (never the whole of a large checkpoint in memory)."""
    h = hashlib.sha256()
    with open_bounded(path, STORE) as fh:  # a regular file only: a FIFO put in its place never blocks
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _clean(rel: Any) -> bool:
    """A relative path inside the folder ("checkpoints/latest.json"), as kdgraph writes them."""
    return isinstance(rel, str) and bool(rel) and not rel.startswith("/") and ".." not in rel.split("/")


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def _new_file(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0))


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"dev": st.st_dev, "ino": st.st_ino}


class Manifest:
    """The manifest of one folder; every method reads it, changes it and writes it back whole."""

    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.path = self.root / NAME
        self.log = log or _say
        self._kept: set[str] = set()  # named by remove() already

    # ------------------------------------------------------------------ the file itself

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def load(self) -> dict[str, Any]:
        """The records ({"files": {rel: record}, "dirs": [rel], "root": created}); empty when there is none."""
        if not self.exists():
            return {"format": FORMAT, "files": {}, "dirs": [], "root": False}
        from .files import RUN_FILE, read_json

        data = read_json(self.path, RUN_FILE, within=self.root)
        ok = isinstance(data, dict) and isinstance(data.get("files"), dict) and isinstance(data.get("dirs"), list)
        ok = ok and data.get("format") == FORMAT and all(isinstance(r, dict) for r in data["files"].values())
        if not ok or not all(_clean(rel) for rel in [*data["files"], *data["dirs"]]):
            raise RunError(
                f"{self.path} is not a manifest this kdgraph wrote; it cannot tell its files from yours there, so "
                f"it writes and deletes nothing in {self.root}. Remove the folder by hand or choose another one"
            )
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.root / f".{NAME}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", opener=_nofollow) as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, self.path)  # atomic like os.replace (kept distinct from the data files' renames)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise RunError(f"could not write {self.path} ({e.strerror or e})") from None

    # ------------------------------------------------------------------ paths

    def _rel(self, path: str | Path) -> str:
        try:  # lexical: a link is judged by _link_in, never resolved here
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root))
        except ValueError:
            rel = None
        if rel is None or ".." in rel.parts or not rel.parts:
            raise RunError(f"{path} is outside {self.root}; kdgraph writes only inside it")
        return rel.as_posix()

    def _link_in(self, rel: str) -> Path | None:
        """The first path from the root to `rel` (itself included) that is a symbolic link or not a folder."""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            p = self.root.joinpath(*parts[:i])
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode) or (i < len(parts) and not stat.S_ISDIR(st.st_mode)):
                return p
        return None

    def _refuse_links(self, rel: str) -> None:
        bad = self._link_in(rel)
        if bad is not None:
            where = f" (to {os.readlink(bad)})" if os.path.islink(bad) else ""
            raise RunError(
                f"{bad} is a symbolic link{where} or not a folder; kdgraph writes only real files inside "
                f"{self.root} and never follows a link out of it. Remove the link or choose another folder"
            )

    # ------------------------------------------------------------------ is it still ours?

    def changed(self, rel: str, data: dict[str, Any]) -> str | None:
        """None when the file at `rel` is the one kdgraph recorded; else why it is not (for "kept X: why")."""
        record = data["files"].get(rel)
        if record is None:
            return "not written by kdgraph"
        if self._link_in(rel) is not None:
            return "reached through a symbolic link, not followed"
        try:
            st = os.lstat(self.root / rel)
        except FileNotFoundError:
            return "gone"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        same = (record.get("dev"), record.get("ino")) == (st.st_dev, st.st_ino)
        if "temp" in record:  # half-written: only its identity is known
            return None if same else CHANGED
        if same:
            if record.get("by") == "inode" or (
                record.get("bytes") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns
            ):
                return None
        if record.get("by") == "sha256" and record.get("bytes") == st.st_size:
            try:
                digest = sha256_file(self.root / rel)
            except KDGraphError:  # swapped for something unreadable since the lstat
                return CHANGED
            if digest == record.get("sha256"):
                return None
        for other in data["files"].values():  # renamed into place, killed before its record was written
            if other.get("temp") == rel and (other.get("dev"), other.get("ino")) == (st.st_dev, st.st_ino):
                return None
        return CHANGED

    def verified(self, path: str | Path, blob: bytes | None = None) -> bool:
        """Whether `path` is listed and its bytes (`blob`, when already read) are those kdgraph wrote."""
        data = self.load()
        rel = self._rel(path)
        record = data["files"].get(rel)
        if record is None or self._link_in(rel) is not None:
            return False
        if blob is not None and record.get("by") == "sha256":
            return len(blob) == record.get("bytes") and hashlib.sha256(blob).hexdigest() == record.get("sha256")
        return self.changed(rel, data) is None

    def listed(self, under: str | Path | None = None) -> list[Path]:
        """The files kdgraph recorded (under a folder of the root), temporary files left out."""
        data = self.load()
        prefix = "" if under is None else self._rel(under) + "/"
        return [self.root / r for r, rec in data["files"].items() if r.startswith(prefix) and "temp" not in rec]

    # ------------------------------------------------------------------ writing

    def make_root(self) -> None:
        """Create the folder (recorded as kdgraph's when it did not exist) and its manifest."""
        created = not os.path.lexists(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.load()
        if created or not self.exists():
            data["root"] = data.get("root", False) or created
            self._save(data)

    def mkdir(self, path: str | Path) -> None:
        """Create a folder under the root; each one made is recorded (removed later only when empty)."""
        rel = self._rel(path)
        self._refuse_links(rel)
        if (self.root / rel).is_dir():
            return
        data = self.load()
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if not (self.root / sub).is_dir():
                (self.root / sub).mkdir()
                if sub not in data["dirs"]:
                    data["dirs"].append(sub)
        self._save(data)

    def _clear_way(self, rel: str, data: dict[str, Any]) -> None:
        """Before (re)writing `rel`: refuse a link or a user's file there; set aside a changed file of kdgraph's."""
        self._refuse_links(rel)
        target = self.root / rel
        if not os.path.lexists(target):
            return
        why = self.changed(rel, data)
        if why is None:
            return
        if rel not in data["files"]:
            raise RunError(
                f"{target} exists and was not written by kdgraph; it will not replace it: move it away or "
                "choose another folder"
            )
        aside, n = target.with_name(f"{target.name}.changed"), 1
        while os.path.lexists(aside):
            aside, n = target.with_name(f"{target.name}.changed-{n}"), n + 1
        os.rename(target, aside)
        del data["files"][rel]
        self.log(f"kept {target} as {aside.name}: changed since kdgraph wrote it")

    def _parent(self, rel: str) -> None:
        if "/" in rel:
            self.mkdir(self.root / rel.rsplit("/", 1)[0])

    def write_atomic(self, path: str | Path, blob: bytes, grows: bool = False) -> None:
        """Write `blob` so that `path` is always the old file or the whole new one; record it.

        `grows`: the file will be appended to (metrics.jsonl): recorded by inode, not by hash.
        """
        rel = self._rel(path)
        self._parent(rel)
        data = self.load()
        self._clear_way(rel, data)
        target = self.root / rel
        tmp, n = target.with_name(f".{target.name}.tmp-{os.getpid()}"), 1
        while os.path.lexists(tmp):
            tmp, n = target.with_name(f".{target.name}.tmp-{os.getpid()}-{n}"), n + 1
        tmp_rel = self._rel(tmp)
        try:
            with open(tmp, "xb") as fh:  # exclusive: never an existing file, never through a link
                data["files"][tmp_rel] = {"by": "inode", "temp": rel, **_identity(os.fstat(fh.fileno()))}
                self._save(data)
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError:
            if tmp_rel in data["files"]:
                tmp.unlink(missing_ok=True)
                del data["files"][tmp_rel]
                self._save(data)
            raise
        del data["files"][tmp_rel]
        data["files"][rel] = self._record(target, blob, grows)
        self._save(data)

    def write_new(self, path: str | Path, blob: bytes) -> None:
        """Write a small file in place (as ``write_text`` did): the old one, if kdgraph's, is replaced."""
        rel = self._rel(path)
        self._parent(rel)
        data = self.load()
        self._clear_way(rel, data)
        target = self.root / rel
        if os.path.lexists(target):
            target.unlink()  # kdgraph's own, checked above
            data["files"].pop(rel, None)
        with open(target, "xb") as fh:
            fh.write(blob)
        data["files"][rel] = self._record(target, blob, False)
        self._save(data)

    def open_append(self, path: str | Path) -> IO[bytes]:
        """The file kdgraph appends to (created and recorded by inode when new); never a link, never a user's."""
        rel = self._rel(path)
        target = self.root / rel
        data = self.load()
        self._clear_way(rel, data)
        if rel in data["files"] and os.path.lexists(target):
            return open(target, "ab", opener=_nofollow)
        self._parent(rel)
        fh = open(target, "ab", opener=_new_file)  # "ab", not "xb": appending is what it does from now on
        data["files"][rel] = {"by": "inode", **_identity(os.fstat(fh.fileno()))}
        self._save(data)
        return fh

    def record_inplace(self, path: str | Path) -> None:
        """Record a file kdgraph just created and writes in place (a memory-mapped store): by inode."""
        rel = self._rel(path)
        self._refuse_links(rel)
        data = self.load()
        data["files"][rel] = {"by": "inode", **_identity(os.lstat(self.root / rel))}
        self._save(data)

    @staticmethod
    def _record(target: Path, blob: bytes, grows: bool) -> dict[str, Any]:
        st = os.stat(target)
        if grows:
            return {"by": "inode", **_identity(st)}
        digest = hashlib.sha256(blob).hexdigest()
        return {"by": "sha256", "bytes": len(blob), "sha256": digest, "mtime_ns": st.st_mtime_ns, **_identity(st)}

    # ------------------------------------------------------------------ deleting

    def remove(self, paths: Iterable[str | Path], data: dict[str, Any] | None = None, save: bool = True) -> list[str]:
        """Delete each listed path that is still kdgraph's; the "kept X: why" line of each other one."""
        paths = list(paths)
        if not paths:
            return []
        data = self.load() if data is None else data
        kept = []
        for path in paths:
            rel = self._rel(path)
            why = self.changed(rel, data)
            if why is None:
                (self.root / rel).unlink()
            elif why != "gone":
                kept.append(f"kept {self.root / rel}: {why}")
                self._kept.add(rel)
            data["files"].pop(rel, None)  # a changed file is the user's from now on
        if save:
            self._save(data)
        return kept

    def remove_temps(self) -> list[str]:
        """Delete the temporary files a killed process left (recorded before it wrote them)."""
        data = self.load()
        return self.remove([self.root / r for r, rec in data["files"].items() if "temp" in rec], data)

    def remove_all(self, keep_root: bool = False) -> list[str]:
        """Delete every file kdgraph wrote here that is unchanged, then its empty folders, then the manifest.

        The folder itself goes too when kdgraph created it and nothing else is left (unless `keep_root`).
        Returns one line per thing kept: files changed since, files kdgraph did not write, links.
        """
        data = self.load()
        kept = self.remove([self.root / r for r in list(data["files"])], data, save=False)
        for rel in sorted(data["dirs"], key=lambda r: -r.count("/")):  # deepest first
            folder = self.root / rel
            if self._link_in(rel) is None and folder.is_dir():
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    continue
            data["dirs"].remove(rel)
        others = self._unlisted(data)
        kept += [f"kept {p}: not written by kdgraph" for p in others[:_SHOWN]]
        if len(others) > _SHOWN:
            kept.append(f"kept {len(others) - _SHOWN} more files in {self.root}: not written by kdgraph")
        if data["files"] or data["dirs"]:
            self._save(data)
            return kept
        self.path.unlink(missing_ok=True)
        if data.get("root") and not keep_root:
            try:
                self.root.rmdir()
            except OSError:
                pass
        return kept

    def _unlisted(self, data: dict[str, Any]) -> list[Path]:
        """Files and links under the root that the manifest does not list (never following a link)."""
        found = []
        for top, dirs, files in os.walk(self.root):
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(top, d))):
                p = Path(top) / name
                rel = self._rel(p)
                if p != self.path and rel not in data["files"] and rel not in self._kept:
                    found.append(p)
            dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(top, d)))
        return found


def fsync_dir(folder: Path) -> None:
    """A folder's entries made durable (after a rename into it); best effort where folders cannot be synced."""
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
