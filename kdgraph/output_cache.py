"""Stored outputs of frozen, deterministic subgraphs, per (sample, augmentation variant).

A frozen net in eval mode whose only input is the image computes a fixed function of the sample: of its
index in the training split and of the augmentation drawn for it (crop offsets and flip: with zero padding
p there are (2p + 1)^2 x 2 variants, 162 on CIFAR; one without augmentation). The planner marks such values
cacheable; with ``train.cache`` on, the training step gathers them from this store instead of running the
net. Each (sample, variant) is computed at most once, at inference batch sizes, and written in place:

    key    = index * variants + variant          variant = (oy * (2p + 1) + ox) * 2 + flip
    values[port][key]  the port's value for that sample as the net computed it (the run's dtype)
    digests[key]       a 64-bit digest of the row (file stores): binds the key, the store's key and every byte
    filled[key]        whether it has been computed

The store is keyed by everything the values depend on (the producing node's resolved spec and weights, the
whole dataset and its preprocessing, the precision); in ``file`` mode it lives under the cache directory as
memory-mapped files shared by every run with the same key, so the seeds and sweeps of one teacher pay for
its forward passes once.

A file store is used only as verified (a stored result is data someone else may have changed):

* ``cache.json`` names the key the store was written for and its layout; another key (two stores swapped or
  moved) or another layout is refused with one line when the store is opened.
* A values, ``digests.bin`` or ``filled.bin`` file of another size than the layout's is set back to its size
  and every row is marked missing, so it is recomputed (never read as zeros behind a ``filled`` flag).
* Each row's digest is a multilinear hash of its words over all ports (odd 64-bit multipliers, wrapping
  sums: one changed word always changes it) plus a mix of the row's key and the store's key, so a zeroed
  row, a row moved to another (sample, variant) and a row of another store all fail. It is checked when a
  row is first read in a process: ``missing()`` (asked before every gather: per step when filling lazily,
  per window of epochs when filling ahead, once for the whole store when precomputing) verifies the filled
  rows it has not verified yet, vectorised over the rows, and reports the failed ones missing, so they are
  recomputed. A gather (``get``) of rows no check has passed is refused with one line. After that the hot
  path reads rows as before: the check costs one pass over the rows a process uses, not one per step.
* Every file is allocated on disk (``posix_fallocate``) when the store is created or repaired, before it
  is memory-mapped: writing a row through the map can then never meet a full disk (which ends a process
  with SIGBUS); a disk too small for the store is one clear error when it is opened, before any training,
  and the store stays unfinished (cache.json is written last), so the next run starts it again. A row is
  marked filled only after its bytes and digest are in place. (Copy-on-write filesystems, ZFS and btrfs,
  allocate again on every write; there a full disk can still end the process.) Preallocation gives up
  sparse files, which saved little: the variants a run draws touch nearly every page of a store.

Not a defence against someone who rewrites a store with consistent digests on purpose (anyone who can
write the cache can do that with any unkeyed hash); it catches damage, truncation, swaps and mix-ups.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import mmap
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .files import CACHE_META, read_json
from .manifest import Manifest

# the fewest rows a forward pass that fills the store runs: kernels pick other algorithms for a handful of
# rows (oneDNN's values 1e-5 apart below 4 rows), so a smaller pass is padded to keep the values bitwise
MIN_ROWS = 8


@dataclass(frozen=True)
class PortLayout:
    """The shape (without the batch) and dtype of one cached port."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def variants_of(pad: int, augment: bool) -> int:
    """How many augmentation variants a sample has: crop offsets x flips, or one without augmentation."""
    return (2 * pad + 1) ** 2 * 2 if augment else 1


def variant_ids(oy: torch.Tensor, ox: torch.Tensor, flip: torch.Tensor, pad: int) -> torch.Tensor:
    """Each sample's variant number from its crop offsets and flip (the loader's draws)."""
    return (oy * (2 * pad + 1) + ox) * 2 + flip.long()


def weights_hash(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(facts: dict[str, Any]) -> str:
    """A short stable digest of what the cached values depend on (JSON-able facts)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]


class OutputCache:
    """Per-port value tables over (sample, variant) keys, in memory or memory-mapped from files.

    ``lazy``: the training step computes and stores the keys it finds missing (one read-back per step);
    once complete (``precompute``) it only gathers. A file store (`folder`) is verified as the module
    docstring says; `key` is the key it is written for (default: the folder's name).
    """

    lazy: bool = True

    def __init__(
        self,
        ports: dict[str, PortLayout],
        samples: int,
        variants: int,
        device: torch.device | str = "cpu",
        folder: Path | None = None,
        key: str | None = None,
    ):
        self.ports, self.samples, self.variants = dict(ports), samples, variants
        self.size = samples * variants
        self.folder = folder
        self.verified: torch.Tensor | None = None  # file stores: the rows this process has checked
        self.repaired: list[str] = []  # what opening the store found damaged (said by train.cache)
        self.rejected = 0  # stored rows that failed their check in this process (recomputed)
        self._trusted = False  # every row verified: a gather needs no check
        if folder is None:
            items = ports.items()
            self.values = {p: torch.empty((self.size, *lay.shape), dtype=lay.dtype, device=device) for p, lay in items}
            self.filled = torch.zeros(self.size, dtype=torch.bool, device=device)
        else:
            self._store = _FileStore(folder, key or folder.name, self.ports, samples, variants)
            self.values, self.filled, self.digests = self._store.values, self._store.filled, self._store.digests
            self.repaired = self._store.repaired
            self.verified = torch.zeros(self.size, dtype=torch.bool)

    @property
    def nbytes(self) -> int:
        return self.size * (sum(lay.nbytes for lay in self.ports.values()) + 1)

    def keys(self, index: torch.Tensor, variant: torch.Tensor | None) -> torch.Tensor:
        return index * self.variants + (variant if variant is not None else 0)

    def missing(self, keys: torch.Tensor) -> torch.Tensor:
        """Positions in `keys` whose values are not stored yet (or failed their check: recomputed)."""
        k = keys.to(self.filled.device)
        if self.verified is None:
            return (~self.filled[k]).nonzero().flatten().to(keys.device)
        checked = self.verified[k]
        if bool(checked.all()):  # the usual answer once a process has read its rows: nothing
            return torch.empty(0, dtype=torch.long, device=keys.device)
        filled = self.filled[k]
        unchecked = (filled & ~checked).nonzero().flatten()
        if len(unchecked):
            filled[unchecked[~self._verify(k[unchecked])]] = False
        return (~filled).nonzero().flatten().to(keys.device)

    def complete(self) -> bool:
        """Every row stored (and, in a file store, verified in this process)."""
        done = bool(self.filled.all()) and (self.verified is None or bool(self.verified.all()))
        self._trusted = self._trusted or done
        return done

    def get(self, keys: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        keys = keys.to(self.filled.device)
        if self.verified is not None and not self._trusted and not bool(self.verified[keys].all()):
            raise DataError(
                f"train.cache: {self.folder}: a gather asked for rows no check has passed (filled by another "
                "process since?); run again"
            )
        return {p: v[keys].to(device, non_blocking=True) for p, v in self.values.items()}

    def put(self, keys: torch.Tensor, outputs: dict[str, torch.Tensor]) -> None:
        keys = keys.to(self.filled.device)
        if self.folder is None:
            for p, v in self.values.items():
                v[keys] = outputs[p].detach().to(v.device, v.dtype)
            self.filled[keys] = True  # after the values: a reader that sees the flag sees the values
            return
        made = {p: outputs[p].detach().to(dtype=lay.dtype) for p, lay in self.ports.items()}
        digests = row_digests(keys, made, self._store.salt).cpu()  # where the rows were made (a GPU: cheap)
        rows = {p: t.to("cpu") for p, t in made.items()}
        for p, v in self.values.items():
            v[keys] = rows[p]  # into allocated blocks (no SIGBUS on a full disk)
        self.digests[keys] = digests
        self.filled[keys] = True  # after the bytes and the digest
        self.verified[keys] = True

    def _verify(self, keys: torch.Tensor) -> torch.Tensor:
        """Whether each of `keys`' stored rows matches its digest; the failed ones are marked missing."""
        ok = torch.empty(len(keys), dtype=torch.bool)
        step = max(1, _CHECK_BYTES // max(1, sum(lay.nbytes for lay in self.ports.values())))
        for start in range(0, len(keys), step):
            part = keys[start : start + step]
            rows = {p: v[part] for p, v in self.values.items()}
            ok[start : start + step] = row_digests(part, rows, self._store.salt) == self.digests[part]
        self.verified[keys[ok]] = True
        bad = keys[~ok]
        if len(bad):
            self.filled[bad] = False
            self.rejected += len(bad)
        return ok

    def to(self, device: torch.device | str) -> OutputCache:
        """The same tables moved (copied) to `device`, e.g. a filled file cache into GPU memory."""
        moved = OutputCache.__new__(OutputCache)
        moved.ports, moved.samples, moved.variants, moved.size, moved.folder = (
            self.ports, self.samples, self.variants, self.size, None,
        )  # fmt: skip
        moved.values = {p: v.to(device) for p, v in self.values.items()}
        moved.filled = self.filled.to(device)
        moved.verified, moved.repaired, moved.rejected, moved._trusted = None, self.repaired, self.rejected, True
        moved.lazy = self.lazy
        return moved


# ----------------------------------------------------------------------------- row digests

_CHECK_BYTES = 32 << 20  # rows verified per pass (bounds the int64 copy of their words)
_GOLDEN = 0x9E3779B97F4A7C15


def _signed(x: int) -> int:
    """A 64-bit constant as torch's int64 holds it."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 words (a bijection: distinct inputs stay distinct), wrapping."""
    z = z + _signed(_GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


_multipliers: dict[tuple[int, int, str], torch.Tensor] = {}


def _words(t: torch.Tensor) -> torch.Tensor:
    """A batch's rows as int64 words (of 4, 2 or 1 bytes each, as the row's size allows)."""
    raw = t.reshape(len(t), -1).contiguous().view(torch.uint8)
    width = raw.shape[1]
    word = torch.int32 if width % 4 == 0 else torch.int16 if width % 2 == 0 else torch.uint8
    return raw.view(word).to(torch.int64)


def row_digests(keys: torch.Tensor, rows: dict[str, torch.Tensor], salt: int) -> torch.Tensor:
    """Each row's digest (int64, on the rows' device): its words over the ports in name order, its key and
    the store's salt. Integer arithmetic wraps alike on every device, so a digest computed on a GPU where
    the rows were made equals one computed from the file."""
    device = next(iter(rows.values())).device if rows else keys.device
    h = _mix(keys.to(device, torch.int64) ^ salt)
    for i, port in enumerate(sorted(rows)):
        words = _words(rows[port])
        if not words.shape[1]:
            continue
        place = (i, words.shape[1], str(device))
        m = _multipliers.get(place)
        if m is None:  # odd multipliers from the port's place and the word's position
            m = _mix(torch.arange(words.shape[1], dtype=torch.int64) + (i << 40)) | 1
            _multipliers[place] = m = m.to(device)
        h = _mix(h + (words * m).sum(1))
    return h


# ----------------------------------------------------------------------------- the files of a store

FORMAT = 2  # cache.json's format: 2 adds the key and digests.bin


class _FileStore:
    """A store's files opened, checked against its key and layout, allocated on disk and mapped into memory."""

    def __init__(self, folder: Path, key: str, ports: dict[str, PortLayout], samples: int, variants: int):
        self.folder, self.key, self.ports = folder, key, ports
        self.salt = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little", signed=True)
        self.repaired: list[str] = []
        self._maps: list[mmap.mmap] = []
        size = samples * variants
        layout = {p: [list(lay.shape), str(lay.dtype)] for p, lay in ports.items()}
        meta = {"format": FORMAT, "key": key, "samples": samples, "variants": variants, "ports": layout}
        if folder.is_symlink():
            raise DataError(f"train.cache: {folder} is a symlink; a store is kdgraph's own folder (remove the link)")
        self.files = Manifest(folder)  # what kdgraph wrote here: `kdgraph cache clear` deletes only that
        try:
            self.files.make_root()
        except OSError as e:
            raise DataError(f"train.cache: cannot create the store {folder}: {e.strerror or e}") from None
        with _locked(folder / ".lock", self.files):  # one process creates or repairs a store at a time
            fresh = not (folder / "cache.json").exists()
            if not fresh:
                self._check_meta(read_json(folder / "cache.json", CACHE_META, within=folder), meta)
            fds: dict[str, int] = {}
            try:  # the descriptors are closed once mapped (the maps hold the files)
                for p in ports:
                    fds[p] = _open_rw(folder / f"{_file(p)}.bin", self.files)
                reset = self._values_sized(fds, size, fresh)
                for name, dtype in (("digests", torch.int64), ("filled", torch.bool)):
                    fds[name] = _open_rw(folder / f"{name}.bin", self.files)
                    have = os.fstat(fds[name]).st_size
                    if have != size * dtype.itemsize:
                        if not fresh:
                            self.repaired.append(f"{name}.bin has {have:,} bytes, not {size * dtype.itemsize:,}")
                        reset = True
                    if reset:  # every row missing: computed again
                        _resize(fds[name], folder, size * dtype.itemsize, preallocate=True, zero=True)
                self.digests = self._map(fds["digests"], (size,), torch.int64)
                self.filled = self._map(fds["filled"], (size,), torch.bool)
                self.values = {p: self._map(fds[p], (size, *lay.shape), lay.dtype) for p, lay in ports.items()}
            finally:
                for fd in fds.values():
                    os.close(fd)
            if fresh:  # last: a store without cache.json is started again
                _write_meta(folder, meta, self.files)

    def _values_sized(self, fds: dict[str, int], size: int, fresh: bool) -> bool:
        """Each values file at its layout's size and allocated; True when one was not (its rows are lost)."""
        reset = fresh
        for p, lay in self.ports.items():
            have, want = os.fstat(fds[p]).st_size, size * lay.nbytes
            if have != want:
                if not fresh:
                    self.repaired.append(f"{_file(p)}.bin has {have:,} bytes, not the layout's {want:,}")
                reset = True
                _resize(fds[p], self.folder, want, preallocate=True, zero=True)
            else:
                _allocated(fds[p], self.folder, want)
        return reset

    def _check_meta(self, found: Any, meta: dict[str, Any]) -> None:
        where = self.folder / "cache.json"
        if not isinstance(found, dict) or found.get("format") != FORMAT:
            raise DataError(
                f"train.cache: {where} is not a store of this kdgraph (format {FORMAT}); remove {self.folder} "
                "to compute it again"
            )
        if found.get("key") != meta["key"]:
            raise DataError(
                f"train.cache: {where} was written for the store {found.get('key')!r}, not {meta['key']!r} (a store "
                f"moved or swapped); remove {self.folder} to compute it again"
            )
        if found != meta:
            raise DataError(
                f"train.cache: {where} describes another layout than this teacher's ({found.get('ports')} for "
                f"{found.get('samples')} x {found.get('variants')}); remove {self.folder} to compute it again"
            )

    def _map(self, fd: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        count = math.prod(shape)
        if not count * dtype.itemsize:
            return torch.empty(shape, dtype=dtype)
        mm = mmap.mmap(fd, count * dtype.itemsize)
        self._maps.append(mm)
        return torch.frombuffer(mm, dtype=dtype, count=count).view(shape)


def _write_error(folder: Path, e: OSError) -> DataError:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DataError(
            f"train.cache: no space left on the device of {folder} while storing teacher outputs; free space, "
            "point $KDGRAPH_CACHE at a larger disk, or set train.cache: memory (the store keeps what it had)"
        )
    return DataError(f"train.cache: cannot write the store {folder}: {e.strerror or e}")


def _write_meta(folder: Path, meta: dict[str, Any], files: Manifest) -> None:
    """cache.json written whole or not at all (a temporary file renamed over it)."""
    tmp = folder / f".cache.json.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            _pwrite_all(fd, memoryview((json.dumps(meta) + "\n").encode()), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / "cache.json")
        files.record_inplace(folder / "cache.json")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_error(folder, e) from None


def _open_rw(path: Path, files: Manifest) -> int:
    """A read-write descriptor of a store file (created and recorded in the manifest; a symlink or
    non-regular file is refused)."""
    created = not os.path.lexists(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        raise DataError(f"train.cache: cannot open {path}: {e.strerror or e} (a store holds regular files)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"train.cache: {path} is not a regular file; remove it to compute the store again")
    if created:
        files.record_inplace(path)  # written in place from now on: recorded by inode, not by hash
    return fd


def _resize(fd: int, folder: Path, nbytes: int, preallocate: bool, zero: bool) -> None:
    """The file at exactly `nbytes` (zeros when `zero`), its blocks allocated when `preallocate`."""
    try:
        if zero:
            os.ftruncate(fd, 0)
        os.ftruncate(fd, nbytes)
        if preallocate and nbytes:
            _fallocate(fd, nbytes)
    except OSError as e:
        raise _write_error(folder, e) from None


def _allocated(fd: int, folder: Path, nbytes: int) -> None:
    """An existing store file's blocks allocated (a copy may be sparse); its bytes are kept."""
    if os.fstat(fd).st_blocks * 512 >= nbytes or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise _write_error(folder, e) from None


def _fallocate(fd: int, nbytes: int) -> None:
    """Blocks for `nbytes` on disk now, so writing through a memory map cannot meet a full disk later."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                raise
    block = bytes(1 << 20)  # no fallocate here: write the zeros
    for offset in range(0, nbytes, len(block)):
        _pwrite_all(fd, memoryview(block)[: min(len(block), nbytes - offset)], offset)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        done = os.pwrite(fd, data, offset)
        if done <= 0:
            raise OSError(errno.EIO, "short write")
        data, offset = data[done:], offset + done


@contextmanager
def _locked(path: Path, files: Manifest) -> Iterator[None]:
    """An advisory lock on `path` (created) while the block runs."""
    fd = _open_rw(path, files)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _file(port: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in port)


def human_bytes(nbytes: int) -> str:
    """Bytes as MiB/GiB, for tables."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
