"""Read pickled data files without running code from them: only numpy arrays and plain containers.

    entry = load_data_pickle(path)        # a CIFAR batch: {b"data": uint8 array, b"fine_labels": [...]}

The CIFAR "python version" batches are pickled dicts of bytes, ints, lists and numpy arrays. A pickle
can name any importable callable, so an ordinary ``pickle.load`` of a crafted file runs code. This
unpickler resolves only the few globals that array reconstruction needs (listed in ``ALLOWED``);
any other global is refused with ``UnsafePickleError`` naming it, before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


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
    obj = _DataUnpickler(io.BytesIO(blob), encoding=encoding).load()
    _check_arrays(obj)
    return obj


def load_data_pickle(path: str | Path, encoding: str = "bytes") -> Any:
    """``loads_data`` of a file (CIFAR batches are pickled with Python 2 byte strings: encoding='bytes')."""
    return loads_data(Path(path).read_bytes(), encoding)


def _check_arrays(obj: Any, depth: int = 0) -> None:
    """No array of Python objects survives (its items would be whatever the file says)."""
    if depth > 32:
        raise UnsafePickleError("it nests containers deeper than a data file does")
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError("it holds an array of Python objects")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_arrays(k, depth + 1)
            _check_arrays(v, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_arrays(v, depth + 1)
