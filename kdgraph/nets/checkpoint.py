"""Load a checkpoint file into a module, with one clear ``CheckpointError`` instead of a traceback.

    load_checkpoint(teacher, "ckpt_epoch_240.pth")                 # RepDistiller / mdistiller: {'model': sd}
    load_checkpoint(student, "run.pt", key="state_dict.student")   # dotted keys walk nested dicts
    load_checkpoint(net, "weights.pth", key=None)                  # the file is the state_dict itself

A ``module.`` (DDP / DataParallel) or ``_orig_mod.`` (torch.compile) prefix on every key is removed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, did_you_mean
from ..safe_load import load_weights

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # names listed per kind of mismatch


def read_checkpoint(path: str | Path) -> Any:
    """torch.load on CPU, weights-only always (a file is data); CheckpointError naming the path otherwise."""
    path = Path(path)
    if not path.is_file():  # the messages tests/bad_graphs pin; the bounded reader checks again on the descriptor
        kind = "no such file" if not path.exists() else "not a regular file"
        kind = "a directory, not a file" if path.is_dir() else kind
        raise CheckpointError(f"checkpoint {path}: {kind}")
    return load_weights(path, f"checkpoint {path}")


def select_key(obj: Any, key: str | None, path: str | Path) -> Any:
    """Pick ``key`` (dotted for nested dicts; a key that itself contains dots also matches) from obj."""
    if key is None:
        return obj
    parts, walked = key.split("."), []
    while parts:
        if not isinstance(obj, Mapping):
            where = ".".join(walked) or "the file"
            raise CheckpointError(f"checkpoint {path}: {where} is a {type(obj).__name__}, not a dict with key {key!r}")
        # the longest run of parts that is a key at this level wins, so "a.b" finds {"a.b": ...} too
        for n in range(len(parts), 0, -1):
            name = ".".join(parts[:n])
            if name in obj:
                obj, walked, parts = obj[name], walked + [name], parts[n:]
                break
        else:
            raise CheckpointError(_missing_key_message(obj, parts[0], walked, key, path))
    return obj


def _missing_key_message(obj: Mapping, part: str, walked: list[str], key: str, path: str | Path) -> str:
    names = [str(k) for k in obj]
    where = f"under {'.'.join(walked)!r}" if walked else "at the top level"
    msg = f"checkpoint {path}: no key {part!r} {where} (asked for key {key!r})"
    if _looks_like_state_dict(obj):
        return msg + f"; the file {'entry' if walked else 'itself'} looks like a bare state_dict: use key: null"
    shown = ", ".join(repr(n) for n in names[:20]) + (f", ... ({len(names)} keys)" if len(names) > 20 else "")
    hint = did_you_mean(part, names)
    return msg + f"; available keys: {shown or '(none)'}" + (f" ({hint})" if hint else "")


def _looks_like_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_wrapper_prefix(state: Mapping[str, Any], expected: Mapping[str, Any]) -> OrderedDict:
    """Remove a ``module.`` / ``_orig_mod.`` prefix carried by every key (unless the module has it too)."""
    out = OrderedDict(state)
    meta = getattr(state, "_metadata", None)
    changed = True
    while changed and out:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in out) and not any(k.startswith(prefix) for k in expected):
                out = OrderedDict((k[len(prefix) :], v) for k, v in out.items())
                if meta is not None:  # keep per-module versions (BatchNorm's) under the new names
                    meta = OrderedDict((k[len(prefix) :] if k.startswith(prefix) else "", v) for k, v in meta.items())
                changed = True
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def _short_shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _listing(names: list[str]) -> str:
    more = f", ... (+{len(names) - _SHOW})" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def mismatch_report(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor], strict: bool) -> list[str]:
    """Lines describing missing / unexpected / shape-mismatched keys (empty when it loads)."""
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {_short_shape(state[k])} in file vs {_short_shape(expected[k])} in model"
        for k in expected
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    ]
    lines = []
    if strict and missing:
        lines.append(f"{len(missing)} missing: {_listing(missing)}")
    if strict and unexpected:
        lines.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if shapes:  # shapes must agree even when not strict
        lines.append(f"{len(shapes)} shape-mismatched: {_listing(shapes)}")
    return lines


def load_checkpoint(module: nn.Module, path: str | Path, key: str | None = "model", strict: bool = True) -> None:
    """Load ``path`` (the entry ``key``, dotted allowed; None = the whole file) into ``module``."""
    state = select_key(read_checkpoint(path), key, path)
    where = f"checkpoint {path}" + (f" [{key}]" if key else "")
    if isinstance(state, nn.Module):  # a pickled whole model: use its weights
        state = state.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{where} is a {type(state).__name__}, not a state_dict")
    expected = module.state_dict()
    state = strip_wrapper_prefix(state, expected)
    problems = mismatch_report(state, expected, strict)
    if problems:
        sizes = f"{len(expected)} keys in the model, {len(state)} in the file"
        head = f"{where} does not fit {type(module).__name__} ({sizes}):"
        raise CheckpointError("\n  ".join([head, *problems]))
    try:
        module.load_state_dict(state, strict=strict)
    except Exception as e:  # anything the pre-check did not foresee, still without a traceback
        raise CheckpointError(f"{where}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    """``Type: first sentence`` of an exception, for one-line messages."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text[0].split('. ')[0].rstrip('.')}"
