"""Checkpoints are data: ``torch.load(weights_only=True)`` only, and a one-time conversion for old files.

    state = load_weights(path, "checkpoint teachers/r56.pth")     # CheckpointError when refused

A full unpickle runs whatever callable the file names, so kdgraph never does one on its own. A
file that holds more than tensors, numbers, strings, lists and dicts (RepDistiller-era checkpoints
keep numpy scalars or argparse options beside the weights) is refused with the command that
converts it, which the user runs once on a file they trust:

    python -m kdgraph.safe_load OLD.pth NEW.pt
"""

from __future__ import annotations

import io
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import CheckpointError
from .files import CHECKPOINT, open_bounded

CONVERT = "python -m kdgraph.safe_load"


def load_weights(source: str | Path | bytes, what: str | None = None, within: str | Path | None = None) -> Any:
    """``torch.load(source, weights_only=True)`` on CPU; one-line CheckpointError otherwise.

    A path is opened by the bounded reader (a regular file, inside `within` when given), never by torch.
    """
    label = what or f"checkpoint {source}"
    if isinstance(source, bytes):
        return _load_stream(io.BytesIO(source), source, label)
    with open_bounded(source, CHECKPOINT, within) as stream:
        return _load_stream(stream, source, label)


def _load_stream(stream: BinaryIO, source: str | Path | bytes, label: str) -> Any:
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e)
        if refused is None:
            raise CheckpointError(f"{label}: unreadable, corrupt or not a torch.save file ({_reason(e)})") from None
        target = source if not isinstance(source, bytes) else "FILE"
        raise CheckpointError(
            f"{label}: refused: it holds a Python object ({refused}), not only tensors, numbers, strings, lists "
            f"and dicts, and unpickling it could run code; if you trust the file, convert it once with "
            f"`{CONVERT} {target} {_converted_name(target)}` and use the new file"
        ) from None
    except Exception as e:  # truncated zip, not a torch file, permissions: one line, no traceback
        raise CheckpointError(f"{label}: unreadable, corrupt or not a torch.save file ({_first_line(e)})") from None


def load_final_graph(path: Path, within: str | Path | None = None) -> dict[str, Any]:
    """The graph weights of a run's final.pt (a cached ``init: {from:}`` result), weights-only."""
    record = load_weights(path, f"{path}", within)
    if not isinstance(record, dict) or not isinstance(record.get("graph"), dict):
        raise CheckpointError(f"{path} is not a kdgraph final.pt (no 'graph' weights); delete it to retrain")
    return record["graph"]


def _refused_global(e: BaseException) -> str | None:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if m:
        return m.group(1)
    m = re.search(r"Unsupported (?:operand|class) ([\w.]+)", str(e))
    return m.group(1) if m and "." in m.group(1) else None


def _converted_name(path: Any) -> str:
    p = Path(str(path))
    return str(p.with_name(p.stem + ".weights.pt"))


def _reason(e: BaseException) -> str:
    """The useful line of torch's long weights-only message (e.g. 'Unsupported operand 32')."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return f"{type(e).__name__}: {lines[i + 1]}"
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text[0].split('. ')[0].rstrip('.')}"


# ----------------------------------------------------------------------------- the one-time conversion


def plain(obj: Any, dropped: list[str], where: str = "") -> Any:
    """Only what weights-only loading reads: tensors, numbers, strings, None, lists, tuples, dicts.

    A module becomes its state_dict, a numpy array a tensor, a numpy scalar a number; anything
    else is dropped and its place recorded in ``dropped``.
    """
    import numpy as np

    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                dropped.append(f"{where}[{k!r}]")
                continue
            value = plain(v, dropped, f"{where}.{k}" if where else str(k))
            if value is not _DROP:
                out[k] = value
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain(v, dropped, f"{where}[{i}]") for i, v in enumerate(obj)]
        items = [v for v in items if v is not _DROP]
        return items if isinstance(obj, list) else tuple(items)
    dropped.append(f"{where or 'the file'} ({type(obj).__module__}.{type(obj).__qualname__})")
    return _DROP


_DROP = object()


def convert(src: str | Path, dst: str | Path) -> list[str]:
    """Fully unpickle `src` (the user vouches for it) and save its plain part to `dst`; the dropped places."""
    with open_bounded(src, CHECKPOINT) as stream:  # the user vouches for the contents, not for the path
        state = torch.load(stream, map_location="cpu", weights_only=False)
    dropped: list[str] = []
    out = plain(state, dropped)
    if out is _DROP:
        raise CheckpointError(f"{src} holds no tensors or containers to keep")
    torch.save(out, dst)
    load_weights(Path(dst))  # the result must load the safe way
    return dropped


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(f"usage: {CONVERT} TRUSTED_OLD.pth NEW.pt  (fully unpickles OLD: run it only on files you trust)")
        return 2
    try:
        dropped = convert(args[0], args[1])
    except (CheckpointError, OSError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"cannot convert {args[0]}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args[1]}" + (f"; dropped {', '.join(dropped)}" if dropped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
