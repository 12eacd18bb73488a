"""Init actions (checkpoint, another graph, an earlier stage, a snapshot, a seed), dependency graphs and their cache.

``init: {from: GRAPH.yaml, overrides: [...]}`` trains that graph first, in kdgraph's cache
(``kdgraph/cache.py``: ``$KDGRAPH_CACHE``, default ``~/.cache/kdgraph``) under the key of what it
trains (kdgraph/deps.py:entry_key: its resolved spec, its whole dataset, its inits), or reuses its final
weights when they are there; what it receives (forwarded data and preset overrides, the caller's, its
own) is resolved and printed by kdgraph/deps.py. A trained entry records its final.pt's SHA-256 in
``entry.json``; a reuse reads final.pt once, checks it against that record and loads those bytes, so a
final.pt damaged, swapped or put there without a record is refused with one line, never loaded.
``init: {seed: N}`` re-initialises the node as a fresh build under seed N (kdgraph/reinit.py).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..cache import CACHE_ENV, cache_root
from ..catalog import plugin_records
from ..checkpoint import has_checkpoint
from ..console import plural
from ..data import Loader
from ..deps import entry_key, load_dependency
from ..errors import CheckpointError, KDGraphError
from ..files import CACHE_META, CHECKPOINT, read_bytes, read_json
from ..manifest import Manifest
from ..nets.checkpoint import load_checkpoint
from ..plan import StagePlan
from ..plugin_trust import same_plugins
from ..reinit import reinitialise
from ..run_guard import run_lock
from ..safe_load import load_weights

__all__ = ["CACHE_ENV", "InitActions", "cache_root"]

ENTRY = "entry.json"  # a trained dependency's record: its key and final.pt's SHA-256


class InitActions:
    """The Trainer's init part: init actions, dependencies, snapshots and fits (a mixin of ``Trainer``)."""

    def _init_node(self, name: str, init: dict[str, Any], path: tuple) -> None:
        """Apply one init action; a failure is reported at the graph file's line that asked for it."""
        try:
            self._apply_init(name, init, path)
        except CheckpointError as e:
            kind = next((k for k in ("checkpoint", "from", "stage", "snapshot", "seed") if k in init), None)
            raise CheckpointError(self.spec.problem((*path, kind) if kind else path, str(e)).format()) from None

    def _apply_init(self, name: str, init: dict[str, Any], where: tuple = ()) -> None:
        module = self.graph.nodes[name]
        if "checkpoint" in init:
            path = (self.spec.base_dir / init["checkpoint"]).expanduser()
            load_checkpoint(module, path, key=init.get("key", "model"), strict=init.get("strict", True))
        elif "from" in init:
            state = self._train_dependency(init, where)
            self._load_node_state(name, init.get("node", name), state, f"graph {init['from']}")
        elif "seed" in init:
            reinitialise(self.graph, name, int(init["seed"]))
        elif "stage" in init:
            self._load_node_state(
                name, init.get("node", name), self.stage_ends[init["stage"]], f"stage {init['stage']}"
            )
        elif "snapshot" in init:
            self._load_node_state(
                name, init.get("node", name), self.snapshots[init["snapshot"]], f"snapshot {init['snapshot']}"
            )
        self.log(f"  init {name}: {json.dumps(init)}")

    def _load_node_state(self, name: str, source_node: str, graph_state: dict[str, Any], where: str) -> None:
        prefix = f"nodes.{source_node}."
        sub = {k[len(prefix) :]: v for k, v in graph_state.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f"{where} has no node {source_node!r} to initialise {name!r} from")
        try:
            result = self.graph.nodes[name].load_state_dict(sub, strict=False)
        except RuntimeError as e:  # shapes differ: one line, not torch's page (validate finds it earlier)
            why = str(e).strip().splitlines()[-1].strip()
            raise CheckpointError(f"node {name!r} does not fit {source_node!r} of {where}: {why}") from None
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"node {name!r} does not fit {source_node!r} of {where}: missing "
                f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )

    def _train_dependency(self, init: dict[str, Any], where: tuple) -> dict[str, Any]:
        """Train another graph file first, or reuse its cached final weights (keyed by its spec hash).

        What it receives is explicit and printed (kdgraph/deps.py: forwarded data overrides, the caller's,
        the init's own `overrides:`)."""
        dep, child = load_dependency(self.spec, init, where, self.init_overrides)
        key = entry_key(child, self.init_overrides)
        folder = cache_root() / f"{child.name}-{key}"
        final = folder / "final.pt"
        plugins = plugin_records(child.doc.get("plugins"), child.base_dir)  # what its graph file imported now
        if (folder / ENTRY).exists():
            same_plugins(folder, plugins)  # trained with other plugin code: refused, never used
            self.log(f"  reusing {dep.describe()} from {folder}")
            return verified_final(folder, key)
        if not folder.exists():
            Manifest(folder).make_root()  # recorded as kdgraph's: `cache clear` may remove it once empty
        # another run may be training it right now (the main process speaks for the run)
        with run_lock(folder, wait=True, log=self.log) if self.main else nullcontext():
            if (folder / ENTRY).exists() or final.exists():  # a final.pt without a record is refused there
                same_plugins(folder, plugins)
                return verified_final(folder, key)
            self.log(f"  training {dep.describe()} first (cached in {folder})")
            resume = has_checkpoint(folder / "checkpoints")  # an interrupted earlier attempt
            type(self)(
                child,
                folder,
                accelerator=self.accelerator,
                log=self.log.nested(child.name),
                resume=resume,
                init_overrides=self.init_overrides,
                locked=True,
            ).run()
            if self.main:
                record_entry(folder, key)
        self.accelerator.wait_for_everyone()  # the record exists for every process
        return verified_final(folder, key)

    def _snapshot(self) -> dict[str, Any]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.graph.state_dict().items()}

    def _stage_setup(self, spec_stage, stage_plan: StagePlan, fit_loader: Loader) -> None:
        """Init actions, the snapshot of the stage's starting weights, and the data fits."""
        self.log(
            f"stage {stage_plan.name}: trains {', '.join(stage_plan.trainable) or 'nothing'}"
            f" for {plural(spec_stage.epochs, 'epoch')}"
        )
        if stage_plan.index == 0:
            for name, node in self.spec.nodes.items():
                if node.init:
                    self._init_node(name, node.init, ("nodes", name, "init"))
        for name, init in spec_stage.init.items():
            self._init_node(name, init, ("stages", stage_plan.index, "init", name))
        if self._snapshot_needed(stage_plan.name, "snapshot"):
            self.snapshots[stage_plan.name] = self._snapshot()
            self._save_side("snapshots", stage_plan.name, self.snapshots[stage_plan.name])
        if stage_plan.fit:
            self._fit(stage_plan, fit_loader)

    def _snapshot_needed(self, stage: str, kind: str) -> bool:
        inits = [s.init for s in self.spec.stages]
        return any(i.get(kind) == stage for group in inits for i in group.values())

    def _fit(self, stage_plan: StagePlan, loader: Loader) -> None:
        self.graph.stage = stage_plan
        self.graph.eval()
        for name in stage_plan.fit:
            self.graph.nodes[name].fit_begin()
        for batch in loader.epoch(1, stage_plan.index):
            self.graph.fit_batch(batch.image, batch.label)
        for name in stage_plan.fit:
            self.graph.nodes[name].fit_end()
            self.log(f"  fitted {name} on {len(loader)} batches")


def record_entry(folder: Path, key: str) -> None:
    """Write `folder`'s entry.json: its key and the SHA-256 and size of the final.pt just trained there."""
    blob = read_bytes(folder / "final.pt", CHECKPOINT, within=folder)
    record = {"format": 1, "key": key, "final": {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}}
    # atomic and recorded in the entry's manifest: `kdgraph cache clear` removes it with the entry
    Manifest(folder).write_atomic(folder / ENTRY, (json.dumps(record, indent=1) + "\n").encode())


def verified_final(folder: Path, key: str) -> dict[str, Any]:
    """The graph weights of a cached dependency's final.pt, only when its bytes are those entry.json records."""
    final = folder / "final.pt"
    fix = f"remove {folder} (or `kdgraph cache clear`) to train it again"
    try:
        record = read_json(folder / ENTRY, CACHE_META, within=folder)
    except KDGraphError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("final"), dict) or record.get("key") != key:
        raise CheckpointError(f"{final}: the cached dependency has no valid record of it ({ENTRY}); {fix}")
    blob = read_bytes(final, CHECKPOINT, within=folder)
    if hashlib.sha256(blob).hexdigest() != record["final"].get("sha256"):
        raise CheckpointError(f"{final} is not the file trained there (its SHA-256 differs from {ENTRY}'s); {fix}")
    state = load_weights(blob, str(final))
    if not isinstance(state, dict) or not isinstance(state.get("graph"), dict):
        raise CheckpointError(f"{final} is not a kdgraph final.pt (no 'graph' weights); {fix}")
    return state["graph"]
