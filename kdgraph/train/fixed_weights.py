"""Weights that do not change in a stage (its frozen nodes'), written once beside the checkpoints.

A KD checkpoint is mostly the frozen teacher (resnet32x4: 7.4 M of the 8.6 M parameters and buffers
of KD resnet32x4 -> resnet8x4), rewritten at every save although it never changes. Here the frozen
nodes' tensors go to one file, ``checkpoints/fixed-<sha256[:16]>.pt``, written when they are first
saved or when any of them changed (another tensor, or an in-place write: its version counter moved);
each checkpoint names that file and its SHA-256 under ``fixed`` and holds only the other tensors. A
resume reads the named file, checks its hash and merges it back, so the weights it loads are the ones a
self-contained checkpoint would hold. The files the two kept checkpoints name are kept; the others are
removed through the run folder's manifest (the folder above ``checkpoints/``), only when still unchanged.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..errors import CheckpointError, KDGraphError
from ..files import CHECKPOINT, read_bytes
from ..manifest import Manifest
from ..safe_load import load_weights

PREFIX = "fixed-"


class FixedWeights:
    """The stage's unchanging tensors: which file holds them, and how to tell that they are still the same."""

    def __init__(self) -> None:
        self.signature: tuple | None = None
        self.ref: dict[str, str] | None = None  # {"file": name, "sha256": digest} of the current file
        self.kept: list[str] = []  # the files the last two checkpoints name

    def split(self, graph_state: dict[str, torch.Tensor], frozen: list[str]) -> tuple[dict, dict, bool]:
        """(tensors to store once, the rest, whether the once-stored ones are new since the last call)."""
        prefixes = tuple(f"nodes.{n}." for n in frozen)
        fixed = {k: v for k, v in graph_state.items() if prefixes and k.startswith(prefixes)}
        rest = {k: v for k, v in graph_state.items() if k not in fixed}
        signature = tuple((k, v.data_ptr(), v._version, tuple(v.shape), v.dtype) for k, v in fixed.items())
        new = signature != self.signature
        self.signature = signature
        return fixed, rest, new

    def write(self, folder: Path, fixed: dict[str, torch.Tensor], new: bool) -> dict[str, str] | None:
        """The reference a checkpoint stores for `fixed` (written first when `new`); None when there is none."""
        if not fixed:
            self.ref = None
            return None
        if new or self.ref is None:
            buf = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in fixed.items()}, buf)
            blob = buf.getvalue()
            digest = hashlib.sha256(blob).hexdigest()
            name = f"{PREFIX}{digest[:16]}.pt"
            manifest = Manifest(folder.parent)
            manifest.mkdir(folder)
            if not manifest.verified(folder / name):
                ckpt.atomic_write_bytes(folder / name, blob, root=folder.parent)
            self.ref = {"file": name, "sha256": digest}
        return dict(self.ref)

    def saved(self, folder: Path, ref: dict[str, str] | None) -> None:
        """After a checkpoint naming `ref` is in place: remove the fixed files neither kept checkpoint names."""
        self.kept = [*self.kept[-1:], ref["file"] if ref else ""]
        manifest = Manifest(folder.parent)
        old = [p for p in manifest.listed(folder) if p.name.startswith(PREFIX) and p.name not in self.kept]
        for line in manifest.remove(old):
            manifest.log(line)


def merged(folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """A loaded checkpoint's graph weights with the fixed ones it names merged back (checked by hash)."""
    ref = state.get("fixed")
    if not ref:
        return state["graph"]
    path = folder / str(ref.get("file", ""))
    if path.parent != folder or not path.name.startswith(PREFIX):
        raise CheckpointError(f"the checkpoint in {folder} names {ref.get('file')!r}, not a fixed-weights file")
    try:
        blob = read_bytes(path, CHECKPOINT, within=folder)
    except KDGraphError:
        blob = None
    if blob is None or hashlib.sha256(blob).hexdigest() != ref.get("sha256"):
        raise CheckpointError(
            f"{path} (the frozen nodes' weights of the checkpoint in {folder}) is missing or damaged; "
            "start the run again with --force"
        )
    return {**load_weights(blob, str(path)), **state["graph"]}
