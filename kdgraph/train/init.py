"""Init actions (checkpoint, another graph, an earlier stage, a snapshot, a seed), dependency graphs and their cache.

``init: {from: GRAPH.yaml, overrides: [...]}`` trains that graph first, in kdgraph's cache
(``kdgraph/cache.py``: ``$KDGRAPH_CACHE``, default ``~/.cache/kdgraph``) under the hash of its resolved
spec, or reuses its final weights when they are there; what it receives (forwarded data and preset
overrides, the caller's, its own) is resolved and printed by kdgraph/deps.py.
``init: {seed: N}`` re-initialises the node as a fresh build under seed N (kdgraph/reinit.py).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Any

from ..cache import CACHE_ENV, cache_root
from ..checkpoint import has_checkpoint
from ..console import plural
from ..data import Loader
from ..deps import load_dependency
from ..errors import CheckpointError
from ..manifest import Manifest
from ..nets.checkpoint import load_checkpoint
from ..plan import StagePlan
from ..reinit import reinitialise
from ..run_guard import run_lock
from ..safe_load import load_final_graph

__all__ = ["CACHE_ENV", "InitActions", "cache_root"]


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
        folder = cache_root() / f"{child.name}-{child.hash()}"
        final = folder / "final.pt"
        if final.exists():
            self.log(f"  reusing {dep.describe()} from {folder}")
            return load_final_graph(final)
        if not folder.exists():
            Manifest(folder).make_root()  # recorded as kdgraph's: `cache clear` may remove it once empty
        # another run may be training it right now (the main process speaks for the run)
        with run_lock(folder, wait=True, log=self.log) if self.main else nullcontext():
            if final.exists():
                return load_final_graph(final)
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
        return load_final_graph(final)

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
