"""The training loop on Accelerate: stages, schedules, evaluation, checkpoints, exact resume.

    summary = Trainer(spec, run_dir).run()

A run directory holds ``spec.yaml`` (the resolved graph), ``run.json`` (command, overrides, hash,
versions), ``metrics.jsonl``, ``checkpoints/`` and, when done, ``final.pt`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .cache import cache_root
from .console import Console, as_console, plural
from .data import Dataset, Loader, load_dataset, make_loaders
from .errors import CheckpointError, DataError, RunError, SpecError
from .graph import DataInfo, DistillGraph, dry_run
from .initcheck import dependency_overrides
from .plan import StagePlan
from .spec import GraphSpec, dump_resolved, load_spec, merge
from .step import LossMeter, TrainStep
from .trackers import accelerator_kwargs, run_config, scalars


class Interrupted(RunError):
    """SIGINT/SIGTERM: the step finished, a checkpoint was written, the run can be resumed."""

    def __init__(self, signum: int | None, run_dir: Path, step: int):
        self.signum = signum
        self.exit_code = 128 + signum if signum else 0  # a planned pause (--stop-after) is a success
        what = "interrupted" if signum else "paused"
        super().__init__(f"{what} at step {step}; checkpoint written. Resume with: kdgraph run --resume {run_dir}")


# ----------------------------------------------------------------------------- small pieces


def group_lr(base: float, cfg: dict[str, Any], epoch: int, epochs: int) -> float:
    """A group's lr at `epoch` (epochs count from 1; the lr is set once per epoch, as the reference code)."""
    kind = cfg.get("type", "constant")
    if kind == "step":  # x gamma once epoch > m, for each milestone m
        lr = base * float(cfg.get("gamma", 0.1)) ** sum(epoch > int(m) for m in cfg.get("milestones", []))
    elif kind == "cosine":
        floor = float(cfg.get("min_lr", 0.0))
        lr = floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(epochs, 1)))
    else:
        lr = base
    warmup = int(cfg.get("warmup", 0) or 0)
    return lr * min(1.0, epoch / warmup) if warmup else lr


def build_optimizer(graph: DistillGraph, stage: StagePlan, train_cfg: dict[str, Any], device: torch.device):
    """One optimizer, one param group per trainable node (node `optim:` overrides the stage's)."""
    groups = []
    base_cfg = train_cfg["optimizer"]
    kind = base_cfg.get("type", "sgd")
    for name in stage.trainable:
        cfg = merge(base_cfg, graph.spec.nodes[name].optim)
        if cfg.get("type", kind) != kind:
            raise SpecError(
                [
                    graph.spec.problem(
                        ("nodes", name, "optim", "type"),
                        "a node's optimizer type must match the stage's",
                        f"use type {kind!r} or omit it",
                    )
                ]
            )
        group = {
            "params": [p for p in graph.nodes[name].parameters() if p.requires_grad],
            "name": name,
            "lr": float(cfg["lr"]),
            "base_lr": float(cfg["lr"]),
            "weight_decay": float(cfg.get("weight_decay", 0.0)),
        }
        if kind == "sgd":
            group.update(momentum=float(cfg.get("momentum", 0.0)), nesterov=bool(cfg.get("nesterov", False)))
        else:
            group.update(betas=tuple(float(b) for b in cfg.get("betas", (0.9, 0.999))), eps=float(cfg.get("eps", 1e-8)))
        groups.append(group)
    impl = base_cfg.get("impl", "auto")
    flags: dict[str, Any] = {}
    if impl == "fused":
        flags["fused"] = True
    elif impl == "foreach":
        flags["foreach"] = True
    elif impl == "for-loop":
        flags["foreach"] = False
    elif device.type == "cuda":
        flags["fused"] = True
    if not groups:
        empty = torch.zeros(0, device=device, requires_grad=True)  # on the device: fused kernels check it
        groups = [{"params": [empty], "name": "_empty", "lr": 0.0, "base_lr": 0.0}]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    return cls(groups, lr=float(base_cfg["lr"]), **flags)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


RUN_FILES = ("run.json", "spec.yaml", "metrics.jsonl", "checkpoints", "summary.json", "final.pt")


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
            if not any((run_dir / f).exists() for f in RUN_FILES):
                raise RunError(f"{run_dir} is not a kdgraph run directory; --force will not empty it")
            for child in run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@contextmanager
def _signals_caught(flag: dict[str, int]):
    """SIGINT/SIGTERM set a flag; the loop finishes its step, checkpoints, and stops."""

    def handler(signum, _frame):
        if flag.get("signum"):
            raise KeyboardInterrupt  # a second signal: stop now
        flag["signum"] = signum

    installed = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            installed[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, old in installed.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- the trainer


@dataclass
class Position:
    stage: int = 0
    epoch: int = 1
    batch: int = 0  # batches done in this epoch
    step: int = 0  # optimizer steps so far, over all stages
    setup_done: bool = False  # this stage's init actions and fits are applied


@dataclass
class Trainer:
    spec: GraphSpec
    run_dir: Path
    accelerator: Any = None
    log: Any = print
    resume: bool = False
    init_overrides: list[str] = field(default_factory=list)
    stop_after: int | None = None  # pause resumably once this many steps are done in total

    def __post_init__(self) -> None:
        from accelerate import Accelerator

        self.run_dir = Path(self.run_dir)
        precision = self.spec.train["precision"]
        self.tracking = False  # only the run that made its Accelerator logs to trackers (not a dependency)
        if self.accelerator is None:
            mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
            trackers = accelerator_kwargs(self.spec, self.run_dir)
            self.accelerator = Accelerator(cpu=use_cpu(), mixed_precision=mp, **trackers)
            self.tracking = bool(trackers)
        self.device = self.accelerator.device
        self.main = self.accelerator.is_main_process
        self.log = as_console(self.log) if self.main else Console(quiet=True)  # one process speaks for the run
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.best: dict[str, float] = {}  # of the current stage
        self.last_eval: dict[str, dict[str, float]] = {}
        self.stage_results: dict[str, dict[str, Any]] = {}  # final and best evaluation of each finished stage
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.stage_ends: dict[str, dict[str, Any]] = {}
        self.saved_step: int | None = None  # step of the last checkpoint written

    # ------------------------------------------------------------------ setup

    def _prepare(self) -> None:
        seed_everything(int(self.spec.train["seed"]))
        try:
            self.dataset: Dataset = load_dataset(self.spec.data, self.spec.base_dir, int(self.spec.train["seed"]))
        except DataError as e:  # say which line of the graph file asked for it
            raise DataError(self.spec.problem(("data", "dataset"), str(e)).format()) from None
        self.info = DataInfo(self.dataset.num_classes, self.dataset.channels, self.dataset.image_size)
        probe = dry_run(self.spec, self.info)
        seed_everything(int(self.spec.train["seed"]))  # the dry run must not change the real weights
        self.graph = DistillGraph(self.spec, self.info)
        self.graph.gradless = probe.gradless  # frozen per stage: DDP then needs no find_unused_parameters
        self.plan = self.graph.plan

    def _loaders(self, train_cfg: dict[str, Any]) -> tuple[Loader, Loader, Loader]:
        acc = self.accelerator
        return make_loaders(self.dataset, self.spec.data, train_cfg, self.device, acc.process_index, acc.num_processes)

    def _write_run_files(self) -> None:
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "spec.yaml").write_text(dump_resolved(self.spec))
        info = {
            "name": self.spec.name,
            "source": str(self.spec.source.resolve()) if self.spec.source else None,
            "overrides": self.spec.overrides,
            "hash": self.spec.hash(),
            "argv": sys.argv,
            "torch": torch.__version__,
            "processes": self.accelerator.num_processes,
            "distributed_type": str(self.accelerator.distributed_type).split(".")[-1],
            "mixed_precision": self.accelerator.mixed_precision,
            "device": str(self.device),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2))

    # ------------------------------------------------------------------ init actions

    def _init_node(self, name: str, init: dict[str, Any], path: tuple) -> None:
        """Apply one init action; a failure is reported at the graph file's line that asked for it."""
        try:
            self._apply_init(name, init)
        except CheckpointError as e:
            kind = next((k for k in ("checkpoint", "from", "stage", "snapshot") if k in init), None)
            raise CheckpointError(self.spec.problem((*path, kind) if kind else path, str(e)).format()) from None

    def _apply_init(self, name: str, init: dict[str, Any]) -> None:
        from .nets.checkpoint import load_checkpoint

        module = self.graph.nodes[name]
        if "checkpoint" in init:
            path = (self.spec.base_dir / init["checkpoint"]).expanduser()
            load_checkpoint(module, path, key=init.get("key", "model"), strict=init.get("strict", True))
        elif "from" in init:
            state = self._train_dependency(init["from"])
            self._load_node_state(name, init.get("node", name), state, f"graph {init['from']}")
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

    def _train_dependency(self, rel: str) -> dict[str, Any]:
        """Train another graph file first, or reuse its cached final weights (keyed by its spec hash)."""
        path = self.spec.base_dir / rel
        child = load_spec(path, dependency_overrides(self.spec.overrides, {}) + self.init_overrides)
        folder = cache_root() / f"{child.name}-{child.hash()}"
        final = folder / "final.pt"
        if final.exists():
            self.log(f"  reusing {rel} from {folder}")
            return torch.load(final, map_location="cpu", weights_only=False)["graph"]
        self.log(f"  training {rel} first (cached in {folder})")
        resume = (folder / "checkpoints" / "latest.json").exists()  # an interrupted earlier attempt
        folder.mkdir(parents=True, exist_ok=True)
        Trainer(
            child, folder, accelerator=self.accelerator, log=self.log.nested(child.name), resume=resume,
            init_overrides=self.init_overrides,
        ).run()
        return torch.load(final, map_location="cpu", weights_only=False)["graph"]

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

    def _save_side(self, kind: str, name: str, state: dict[str, Any]) -> None:
        if self.main:
            (self.run_dir / kind).mkdir(exist_ok=True)
            ckpt.save_file(self.run_dir / kind / f"{name}.pt", state)

    # ------------------------------------------------------------------ metrics

    def _write_metrics(self, record: dict[str, Any]) -> None:
        if self.main:
            try:
                with open(self.metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()
            except OSError as e:  # the checkpoint names how many lines are good: a torn line is cut on resume
                why = e.strerror or e
                raise RunError(f"could not write {self.metrics_path} ({why}); the last checkpoint is kept") from None
        if self.tracking:
            self.accelerator.log(scalars(record), step=record["step"])

    def _metrics_lines(self) -> int:
        """Lines of metrics.jsonl, made durable first: the checkpoint about to name them must find them."""
        if not self.metrics_path.exists():
            return 0
        with open(self.metrics_path, "rb+") as fh:
            os.fsync(fh.fileno())
            return sum(1 for _ in fh)

    def _truncate_metrics(self, lines: int) -> None:
        if self.main and self.metrics_path.exists():
            kept = self.metrics_path.read_text().splitlines(keepends=True)[:lines]
            ckpt.atomic_write_bytes(self.metrics_path, "".join(kept).encode())

    @torch.no_grad()
    def evaluate(self, loader: Loader) -> dict[str, dict[str, float]]:
        """Top-1 and top-5 (in %) of each evaluated port over the test split, across processes."""
        graph = self.graph
        graph.eval()
        ports = graph.stage.eval_ports
        if not ports:
            graph.train()
            return {}
        counts = torch.zeros(len(ports), 2, device=self.device, dtype=torch.float64)
        seen = torch.zeros((), device=self.device, dtype=torch.float64)
        with self.accelerator.autocast():
            for batch in loader.epoch(1):
                out = graph.evaluate(batch.image)
                for i, port in enumerate(ports):
                    top = out[port].float().topk(min(5, out[port].shape[1]), dim=1).indices
                    hit = top == batch.label[:, None]
                    counts[i, 0] += hit[:, 0].sum()
                    counts[i, 1] += hit.any(dim=1).sum()
                seen += len(batch.label)
        counts = self.accelerator.reduce(counts, "sum")
        seen = self.accelerator.reduce(seen, "sum")
        graph.train()
        n = max(float(seen), 1.0)
        return {
            "top1": {p: round(100 * float(counts[i, 0]) / n, 4) for i, p in enumerate(ports)},
            "top5": {p: round(100 * float(counts[i, 1]) / n, 4) for i, p in enumerate(ports)},
        }

    # ------------------------------------------------------------------ checkpoints

    def _save(self, pos: Position, optimizer, acc_state: dict[str, Any]) -> None:
        self.accelerator.wait_for_everyone()
        if not self.main:
            return
        state = {
            "graph": self.graph.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer else None,
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
        ckpt.save_checkpoint(self.run_dir / "checkpoints", state, pos.step)
        self.saved_step = pos.step

    def _restore(self) -> tuple[Position, dict[str, Any]]:
        state = ckpt.load_latest(self.run_dir / "checkpoints")
        if state["hash"] != self.spec.hash():
            raise CheckpointError(
                f"{self.run_dir} was started from a different graph (hash {state['hash']} != "
                f"{self.spec.hash()}); resume with the same graph and overrides"
            )
        self.graph.load_state_dict(state["graph"])
        for kind, names, target in (
            ("snapshots", state["snapshots"], self.snapshots),
            ("stage_ends", state["stage_ends"], self.stage_ends),
        ):
            for name in names:
                side = self.run_dir / kind / f"{name}.pt"
                try:
                    target[name] = torch.load(side, map_location="cpu", weights_only=False)
                except (OSError, RuntimeError, EOFError) as e:
                    raise CheckpointError(f"cannot read {side} ({e}); start a new run") from None
        self.best, self.last_eval = state["best"], state["last_eval"]
        self.stage_results = state.get("stage_results", {})
        self._truncate_metrics(state["metrics_lines"])
        self._pending_rng = state["rng"]
        self.saved_step = state["position"]["step"]
        return Position(**state["position"]), state

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        self._prepare()
        if self.tracking:
            self.accelerator.init_trackers(self.spec.name, config=run_config(self.spec))
        resumed_state: dict[str, Any] | None = None
        if self.resume and not ckpt.has_checkpoint(self.run_dir / "checkpoints"):
            self.log(f"{self.run_dir} stopped before its first checkpoint: starting it from the beginning")
            self._truncate_metrics(0)
            self.resume = False
        if self.resume:
            pos, resumed_state = self._restore()
            self.log(
                f"resuming {self.run_dir} at stage {self.plan.stages[pos.stage].name}, epoch {pos.epoch}, "
                f"batch {pos.batch} (step {pos.step})"
            )
        else:
            pos = Position()
            self._write_run_files()
        flag: dict[str, int] = {}
        with _signals_caught(flag):
            while pos.stage < len(self.plan.stages):
                self._run_stage(pos, resumed_state, flag)
                resumed_state = None
                pos = Position(stage=pos.stage + 1, step=pos.step)
        return self._finish()

    def _run_stage(self, pos: Position, resumed: dict[str, Any] | None, flag: dict[str, int]) -> None:
        acc = self.accelerator
        spec_stage = self.spec.stages[pos.stage]
        stage = self.plan.stages[pos.stage]
        cfg = spec_stage.train
        train_loader, fit_loader, test_loader = self._loaders(cfg)
        if not resumed:  # each stage reports its own evaluations (KCD's CE-only student is not its result)
            self.best, self.last_eval = {}, {}
        self.graph.set_stage(stage)
        if not pos.setup_done:
            self._stage_setup(spec_stage, stage, fit_loader)
            pos.setup_done = True
        self.graph.set_stage(stage)
        if cfg["channels_last"]:
            self.graph.to(memory_format=torch.channels_last)
        self.graph.to(self.device)
        optimizer = build_optimizer(self.graph, stage, cfg, self.device)
        if resumed and resumed.get("optimizer"):
            optimizer.load_state_dict(resumed["optimizer"])
        gradless = self.graph.gradless.get(stage.index)
        if gradless:
            self.log(f"  no loss reaches {len(gradless)} parameter(s) in this stage, frozen: {_summarise(gradless)}")
        model, optimizer = acc.prepare(self.graph, optimizer)
        if cfg["compile"]:
            model = torch.compile(model)
        names = self.graph.loss_names(stage)
        log_every, ckpt_every = int(cfg["log_every"]), int(cfg["checkpoint_every"])
        step = TrainStep(acc, model, optimizer, cfg.get("grad_clip"))
        meter = LossMeter(len(names), log_every, self.device)  # losses stay on the device between logs
        if resumed and resumed.get("accumulators"):
            a = resumed["accumulators"]
            meter.start(pos.step + 1, a["losses"], a["steps"])
        else:
            meter.start(pos.step + 1)
        if resumed:
            set_rng_state(self._pending_rng)
        else:
            self._save(pos, optimizer, meter.state())
        skip_nan = cfg["on_nan"] == "skip"
        many = acc.num_processes > 1
        while pos.epoch <= spec_stage.epochs:
            epoch = pos.epoch
            for group in optimizer.param_groups:
                group["lr"] = group_lr(group["base_lr"], cfg["lr_schedule"], epoch, spec_stage.epochs)
            self.graph.set_epoch(epoch)
            weights = self.graph.loss_weights()
            meter.weights = [weights[n] for n in names]  # the NaN check recomputes the weighted total
            t_last, images = time.perf_counter(), 0
            bar = self._bar(stage.name, epoch, spec_stage.epochs, train_loader, pos.batch)
            # the hot loop: no host synchronisation (metrics and NaN checks wait for the boundaries)
            for batch in train_loader.epoch(epoch, stage.index, pos.batch):
                total, losses = step.forward(batch.image, batch.label, batch.index)
                # on_nan: skip must decide now, so it reads back every step
                if skip_nan and not bool(torch.isfinite(losses).all() & torch.isfinite(total.detach())):
                    step.skip()
                    self.log(f"  skipped step {pos.step + 1}: non-finite loss")
                else:
                    step.update(total)
                meter.add(losses)
                pos.batch += 1
                pos.step += 1
                images += len(batch.label) * acc.num_processes
                bar.update(len(batch.label) * acc.num_processes)
                boundary = pos.step % log_every == 0 or pos.batch == len(train_loader)
                due = boundary or pos.step % ckpt_every == 0
                # several processes must agree on stopping: a signal is honoured at the next boundary
                signum = _agreed_signal(flag, acc) if (many and due) else (0 if many else flag.get("signum", 0))
                stop = bool(signum) or pos.step == self.stop_after
                if (due or stop) and not skip_nan:
                    self._check_finite(meter.first_bad(acc), names, skip_nan)
                if boundary:
                    means, _ = meter.read(acc)  # the one read-back (and cross-process mean) per window
                    now = time.perf_counter()
                    loss = self._log_train(stage, pos, names, means, optimizer, images / (now - t_last))
                    bar.show(loss, images / (now - t_last))
                    meter.start(pos.step + 1)
                    t_last, images = now, 0
                if pos.step % ckpt_every == 0 or stop:
                    self._save(pos, optimizer, meter.state())
                if stop:
                    bar.close()
                    raise Interrupted(signum or None, self.run_dir, pos.step)
            bar.close()
            if epoch % int(cfg["eval_every"]) == 0 or epoch == spec_stage.epochs:
                result = self.evaluate(test_loader)
                if result:
                    self._record_eval(stage, epoch, pos.step, result)
            pos.epoch, pos.batch = epoch + 1, 0
            self._save(pos, optimizer, meter.state())
        self.graph = acc.unwrap_model(model) if not cfg["compile"] else self.graph
        self.stage_results[stage.name] = {"final": self.last_eval, "best_top1": dict(self.best)}
        if len(self.plan.stages) > 1:  # every stage's end weights are kept; in memory only those an init uses
            end = self._snapshot()
            if self._snapshot_needed(stage.name, "stage"):
                self.stage_ends[stage.name] = end
            self._save_side("stage_ends", stage.name, end)
        acc.free_memory()

    def _bar(self, stage: str, epoch: int, epochs: int, loader: Loader, start: int):
        """This epoch's progress (a bar on a terminal, plain lines otherwise; see console.py)."""
        quiet = not (self.main and self.spec.train["progress"])
        log = Console(quiet=True) if quiet else self.log
        images = (len(loader) - start) * int(self.spec.data["batch_size"])  # the global batch
        return log.epoch_bar(f"{self.spec.name}/{stage}", epoch, epochs, images)

    def _check_finite(self, first_bad: list[int], names: list[str], skip: bool) -> None:
        """Stop at the first NaN/Inf loss, naming its edge and step; no checkpoint has seen it yet."""
        if skip:
            return
        hits = [(step, i) for i, step in enumerate(first_bad) if step >= 0]
        if not hits:
            return
        step, i = min(hits)
        if i < len(names):
            edge = self.spec.edge(names[i])
            path, what = ("edges", edge.index), f"loss edge {edge.name!r} became NaN/Inf at step {step}"
        else:
            path, what = ("edges",), f"the weighted sum of the losses became NaN/Inf at step {step} (check the weights)"
        kept = f"step {self.saved_step}" if self.saved_step is not None else "none yet"
        raise RunError(
            self.spec.problem(
                path,
                f"{what}; stopped. Last good checkpoint: {kept}, in {self.run_dir / 'checkpoints'}",
                "lower the lr or fix the loss, or set train.on_nan: skip to skip such steps",
            ).format()
        )

    def _log_train(
        self,
        stage: StagePlan,
        pos: Position,
        names: list[str],
        means: list[float],
        optimizer,
        images_per_s: float,
    ) -> float:
        weights = self.graph.loss_weights()
        record = {
            "kind": "train",
            "stage": stage.name,
            "epoch": pos.epoch,
            "step": pos.step,
            "loss": sum(weights[n] * v for n, v in zip(names, means)),
            "losses": dict(zip(names, means)),
            "lr": {g["name"]: g["lr"] for g in optimizer.param_groups},
            "images_per_s": round(images_per_s, 1),
        }
        self._write_metrics(record)
        return record["loss"]

    def _record_eval(self, stage: StagePlan, epoch: int, step: int, result: dict[str, dict[str, float]]) -> None:
        for port, top1 in result["top1"].items():
            self.best[port] = max(self.best.get(port, 0.0), top1)
        self.last_eval = result
        self._write_metrics(
            {"kind": "eval", "stage": stage.name, "epoch": epoch, "step": step, **result, "best_top1": dict(self.best)}
        )
        shown = "  ".join(f"{p} top-1 {v:.2f}%" for p, v in result["top1"].items())
        self.log(f"  [{stage.name} epoch {epoch}] {shown}")

    def _finish(self) -> dict[str, Any]:
        summary = {
            "name": self.spec.name,
            "run_dir": str(self.run_dir),
            "final": self.last_eval,
            "best_top1": self.best,
            "deploy": self.spec.deploy,
            "hash": self.spec.hash(),
        }
        if len(self.plan.stages) > 1:
            summary["stages"] = self.stage_results
        if self.main:
            ckpt.save_file(
                self.run_dir / "final.pt",
                {
                    "graph": self.graph.state_dict(),
                    "spec": self.spec.doc,
                    "source": str(self.spec.source) if self.spec.source else None,
                    "deploy": self.spec.deploy,
                    "data_info": self.info.__dict__.copy(),
                    "normalize": {"mean": list(self.dataset.mean), "std": list(self.dataset.std)},
                    "epoch": max(1, self.spec.stages[-1].epochs),  # scheduled op parameters end at it
                    "summary": summary,
                },
            )
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.accelerator.wait_for_everyone()  # final.pt exists for every process (a cached dependency)
        if self.tracking:
            self.accelerator.end_training()
        return summary


def _summarise(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _agreed_signal(flag: dict[str, int], accelerator: Any) -> int:
    """The signal any process received (0: none), the same on every process (a collective)."""
    mine = torch.tensor([int(flag.get("signum", 0))], device=accelerator.device)
    return int(accelerator.gather(mine).max())
