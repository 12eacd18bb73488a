"""Read pickled data files without running code from them: only numpy arrays and plain containers.

    entry = load_data_pickle(path)        # a CIFAR batch: {b"data": uint8 array, b"fine_labels": [...]}

The CIFAR "python version" batches are pickled dicts of bytes, ints, lists and numpy arrays. A pickle
can name any importable callable, so an ordinary ``pickle.load`` of a crafted file runs code. This
unpickler resolves only the few globals that array reconstruction needs (listed in ``ALLOWED``);
any other global is refused with ``UnsafePickleError`` naming it, before anything is called.

A pickle can also share one object many times (its memo), so a few kilobytes can describe a tree
of 10^18 paths: the check after loading walks each container once (a visited set), at most
``MAX_DEPTH`` deep and ``MAX_OBJECTS`` in all, and refuses anything beyond that.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .files import DATASET, open_bounded

MAX_DEPTH = 32  # a CIFAR batch is 2 deep (dict -> list -> int)
MAX_OBJECTS = 4_000_000  # values walked; CIFAR-100's train batch holds about 150,000


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks for a global the data format does not hold (a crafted or foreign file)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refused array reconstruction of {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # protocol 5 (numpy's out-of-band layout): plain bytes reinterpreted as an array
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("refused an object array")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refused dtype {spec!r}")
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise UnsafePickleError("refused an object array")
    return dtype


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"it asks for {module}.{name}, which a data file never needs (only numpy arrays, "
                "numbers, strings, lists and dicts are read); it may be crafted to run code"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("it uses persistent ids, which a data file never needs")


def loads_data(blob: bytes, encoding: str = "bytes") -> Any:
    """Unpickle ``blob`` allowing nothing but numpy arrays and builtin containers and scalars."""
    try:
        obj = _DataUnpickler(io.BytesIO(blob), encoding=encoding).load()
    except (MemoryError, RecursionError):
        raise UnsafePickleError("it describes more data than the file holds (nested or sized beyond memory)") from None
    _check_arrays(obj)
    return obj


def load_data_pickle(path: str | Path, encoding: str = "bytes") -> Any:
    """``loads_data`` of a file (CIFAR batches are pickled with Python 2 byte strings: encoding='bytes')."""
    with open_bounded(path, DATASET) as fh:  # a regular file within the bound (a FIFO is refused, not waited on)
        try:
            blob = fh.read()
        except OSError as e:
            raise DataError(f"{path}: cannot read dataset file: {e.strerror or e}") from None
    return loads_data(blob, encoding)


def _check_arrays(obj: Any) -> None:
    """No array of Python objects survives (its items would be whatever the file says); the walk is bounded.

    Each container is walked once however often the pickle shares it, iteratively (no recursion
    limit to hit), at most MAX_DEPTH deep and MAX_OBJECTS values in all.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(obj, 0)]
    count = 1
    while stack:
        item, depth = stack.pop()
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise UnsafePickleError("it holds an array of Python objects")
            continue
        if not isinstance(item, (dict, list, tuple, set, frozenset)) or id(item) in seen:
            continue
        if depth >= MAX_DEPTH:
            raise UnsafePickleError("it nests containers deeper than a data file does")
        seen.add(id(item))
        count += 2 * len(item) if isinstance(item, dict) else len(item)
        if count > MAX_OBJECTS:  # counted before they are listed: a huge container costs nothing to refuse
            raise UnsafePickleError(f"it holds more than {MAX_OBJECTS:,} values, more than a data file does")
        children = [x for kv in item.items() for x in kv] if isinstance(item, dict) else list(item)
        stack.extend((child, depth + 1) for child in children)
