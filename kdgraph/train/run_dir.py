"""The run directory: its files (spec.yaml, run.json), metrics.jsonl, checkpoints and side files.

A run directory holds ``spec.yaml`` (the resolved graph), ``run.json`` (command, overrides, hash,
versions), ``metrics.jsonl``, ``checkpoints/`` and, when done, ``final.pt`` and ``summary.json``.
Checkpoints are written atomically and name how many metrics lines are good, so a resumed run
continues exactly where it stopped. Every file is written through the folder's manifest
(kdgraph/manifest.py): never through a link, never over a user's file, and --force deletes only
what it lists.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..catalog import plugin_records
from ..checkpoint_fallback import read_checkpoint
from ..errors import CheckpointError, RunError
from ..files import METRICS, open_bounded, read_bytes
from ..manifest import Manifest
from ..nan_guard import refuse_nonfinite
from ..rng import rng_state
from ..run_guard import RUN_ENTRIES, check_run_folder, clear_run, write_marker
from ..safe_load import load_weights
from ..spec import GraphSpec, dump_resolved
from ..trackers import scalars
from .fixed_weights import FixedWeights, merged

RUN_FILES = RUN_ENTRIES  # the names a run writes at its top (--force removes what the manifest lists)


def use_cpu() -> bool:
    """Whether runs use the CPU: no CUDA, or KDGRAPH_CPU=1."""
    return not torch.cuda.is_available() or os.environ.get("KDGRAPH_CPU") == "1"


def launched_processes() -> int:
    """How many processes a launcher (torchrun, accelerate launch, mpirun) started for this run."""
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def new_run_dir(spec: GraphSpec, out: str | Path | None, force: bool) -> Path:
    """A fresh run directory; an existing non-empty one is refused, or with `force` emptied first.

    Under a multi-process launcher the main process chooses (the default name holds the time) and
    creates it, and every process receives the same path, or the same error.
    """
    if launched_processes() == 1:
        return _make_run_dir(spec, out, force)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=use_cpu())  # the Trainer's Accelerator reuses this process group
    answer: list[Any] = [None]
    if state.is_main_process:
        try:
            answer = [str(_make_run_dir(spec, out, force))]
        except RunError as e:
            answer = [e]
    broadcast_object_list(answer, from_process=0)
    if isinstance(answer[0], RunError):
        raise answer[0]
    return Path(answer[0])


def _make_run_dir(spec: GraphSpec, out: str | Path | None, force: bool) -> Path:
    """`force` only ever empties a folder that holds a kdgraph run, never any other folder."""
    if out is None:
        base = Path("runs") / spec.name / time.strftime("%Y%m%d-%H%M%S")
        run_dir, n = base, 1
        while run_dir.exists():
            run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    else:
        run_dir = Path(out)
        if run_dir.exists() and not run_dir.is_dir():
            raise RunError(f"{run_dir} exists and is not a directory; choose another --out")
        if run_dir.exists() and any(run_dir.iterdir()):
            if not force:
                raise RunError(
                    f"run directory {run_dir} exists and is not empty; resume it with --resume {run_dir}, "
                    "pass --force to overwrite it, or choose another --out"
                )
            for line in clear_run(run_dir):  # only a marked folder, only the files its manifest lists
                print(line)
    Manifest(run_dir).make_root()
    write_marker(run_dir)
    return run_dir


@dataclass
class Position:
    """Where a run is: saved in every checkpoint, so a resumed run continues at this very batch."""

    stage: int = 0
    epoch: int = 1
    batch: int = 0  # batches done in this epoch
    step: int = 0  # optimizer steps so far, over all stages
    setup_done: bool = False  # this stage's init actions and fits are applied


class RunFiles:
    """The Trainer's run-directory part: run files, metrics lines, checkpoints (a mixin of ``Trainer``)."""

    def _manifest(self) -> Manifest:
        return Manifest(self.run_dir, self.log)

    def _check_folder(self) -> None:
        """Before anything is written: no run entry links out of the folder, and it is not a pre-manifest run."""
        if self.main:
            check_run_folder(self.run_dir)

    def _write_run_files(self) -> None:
        if not self.main:
            return
        self._manifest().make_root()
        write_marker(self.run_dir)
        self._manifest().write_new(self.run_dir / "spec.yaml", dump_resolved(self.spec).encode())
        info = {
            "name": self.spec.name,
            "source": str(self.spec.source.resolve()) if self.spec.source else None,
            "overrides": self.spec.overrides,
            "hash": self.spec.hash(),
            "plugins": plugin_records(self.spec.doc.get("plugins"), self.spec.base_dir),  # name, path, SHA-256
            "argv": sys.argv,
            "torch": torch.__version__,
            "processes": self.accelerator.num_processes,
            "distributed_type": str(self.accelerator.distributed_type).split(".")[-1],
            "mixed_precision": self.accelerator.mixed_precision,
            "device": str(self.device),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._manifest().write_new(self.run_dir / "run.json", json.dumps(info, indent=2).encode())

    def _save_side(self, kind: str, name: str, state: dict[str, Any]) -> None:
        if self.main:
            self._manifest().mkdir(self.run_dir / kind)
            ckpt.save_file(self.run_dir / kind / f"{name}.pt", state, root=self.run_dir)

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.main:
            try:
                with self._manifest().open_append(self.metrics_path) as fh:
                    fh.write((json.dumps(record) + "\n").encode())
                    fh.flush()
            except OSError as e:  # the checkpoint names how many lines are good: a torn line is cut on resume
                why = e.strerror or e
                raise RunError(f"could not write {self.metrics_path} ({why}); the last checkpoint is kept") from None
        if getattr(self, "tracking", False):  # train.log_with: the same record to the trackers
            self.accelerator.log(scalars(record), step=record["step"])

    def _metrics_lines(self) -> int:
        """Lines of metrics.jsonl, made durable first: the checkpoint about to name them must find them."""
        if not self.metrics_path.exists():
            return 0
        with open_bounded(self.metrics_path, METRICS, within=self.run_dir) as fh:
            os.fsync(fh.fileno())  # fsync flushes the file, whichever descriptor asks
            return sum(1 for _ in fh)

    def _truncate_metrics(self, lines: int) -> None:
        if self.main and (self.metrics_path.exists() or self.metrics_path.is_symlink()):
            blob = read_bytes(self.metrics_path, METRICS, within=self.run_dir)  # a FIFO or link out: RunError
            kept = blob.splitlines(keepends=True)[:lines]
            ckpt.atomic_write_bytes(self.metrics_path, b"".join(kept), root=self.run_dir, grows=True)

    def _save(self, pos: Position, optimizer, acc_state: dict[str, Any]) -> None:
        self.accelerator.wait_for_everyone()
        if getattr(self, "_fixed", None) is None:
            self._fixed = FixedWeights()
        stage = getattr(self.graph, "stage", None)
        # the stage's frozen nodes are written once (fixed_weights.py), the rest with every checkpoint
        fixed, graph, new = self._fixed.split(self.graph.state_dict(), list(stage.frozen) if stage else [])
        weights = {"graph": graph, "optimizer": optimizer.state_dict() if optimizer else None}
        checked = {**weights, "graph": {**fixed, **graph}} if new else weights
        refuse_nonfinite(checked, self.spec, pos.step, self.saved_step, self.run_dir)  # every process: same weights
        if not self.main:
            return
        folder = self.run_dir / "checkpoints"
        self._manifest().mkdir(folder)
        ref = self._fixed.write(folder, fixed, new)
        state = {
            **weights,
            "fixed": ref,
            "position": pos.__dict__.copy(),
            "rng": rng_state(),
            "metrics_lines": self._metrics_lines(),
            "best": dict(self.best),
            "last_eval": dict(self.last_eval),
            "stage_results": dict(self.stage_results),
            "accumulators": acc_state,
            "hash": self.spec.hash(),
            "snapshots": list(self.snapshots),
            "stage_ends": list(self.stage_ends),
        }
        ckpt.save_checkpoint(folder, state, pos.step, root=self.run_dir, log=self.log)
        self._fixed.saved(folder, ref)
        self.saved_step = pos.step

    def _restore(self) -> tuple[Position, dict[str, Any]]:
        state = ckpt.load_latest(self.run_dir / "checkpoints", log=self.log, root=self.run_dir)
        if state.get("hash") != self.spec.hash():
            raise CheckpointError(
                f"{self.run_dir} was started from a different graph (hash {state.get('hash')} != "
                f"{self.spec.hash()}); resume with the same graph and overrides"
            )
        try:  # the file passed its hash: a wrong layout is a foreign or hand-made file, said in one line
            self.graph.load_state_dict(merged(self.run_dir / "checkpoints", state))
            self._fixed = FixedWeights()
            self._fixed.kept = [state["fixed"]["file"]] if state.get("fixed") else []  # the resumed one names it
            for kind, names, target in (
                ("snapshots", state["snapshots"], self.snapshots),
                ("stage_ends", state["stage_ends"], self.stage_ends),
            ):
                for name in names:
                    if name not in {st.name for st in self.spec.stages}:  # a name, never a path
                        raise ValueError(f"unknown stage {name!r} in {kind}")
                    side = self.run_dir / kind / f"{name}.pt"
                    target[name] = _verified_side(self._manifest(), side)
            self.best, self.last_eval = state["best"], state["last_eval"]
            self.stage_results = state.get("stage_results", {})
            self._truncate_metrics(state["metrics_lines"])
            self._pending_rng = state["rng"]
            self.saved_step = state["position"]["step"]
            return Position(**state["position"]), state
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise CheckpointError(
                f"the checkpoint in {self.run_dir / 'checkpoints'} is not laid out as kdgraph writes it "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); start the run again with --force"
            ) from None


def _verified_side(manifest: Manifest, side: Path) -> dict[str, Any]:
    """A snapshot or stage-end file: loaded weights-only, then used only when the manifest lists its bytes."""
    blob = read_checkpoint(side, manifest.root)
    weights = load_weights(blob, f"{side} (start a new run if it is lost)")
    if not manifest.verified(side, blob):
        raise CheckpointError(
            f"{side} is not the file kdgraph wrote (changed, or not listed in {manifest.path}); "
            "start the run again with --force"
        )
    return weights
