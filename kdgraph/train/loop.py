"""The training loop on Accelerate: per stage, setup -> epochs -> end; evaluation; exact resume.

    summary = Trainer(check_graph("graphs/kd.yaml"), run_dir).run()     # or Trainer(spec, run_dir)

The run directory's files and checkpoints are ``run_dir.RunFiles``; init actions, dependencies,
snapshots and fits are ``init.InitActions``; the optimizer and lr are ``optim``; the step is ``step``.
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..augment import make_views
from ..catalog import plugin_records
from ..check import CheckedGraph, check_spec
from ..console import Console, as_console
from ..data import Dataset, Loader, load_dataset, make_loaders, normalization_of
from ..errors import DataError, RunError
from ..peak_memory import peak_memory_mb
from ..plan import StagePlan
from ..rng import set_rng_state
from ..run_guard import run_lock
from ..spec import GraphSpec
from ..trackers import accelerator_kwargs, run_config
from .cache import OutputCaches, attach_output_caches
from .fusion import attach_fusion
from .init import InitActions
from .optim import build_optimizer, group_lr
from .run_dir import Position, RunFiles, use_cpu
from .step import LossMeter, TrainStep


class Interrupted(RunError):
    """SIGINT/SIGTERM: the step finished, a checkpoint was written, the run can be resumed."""

    def __init__(self, signum: int | None, run_dir: Path, step: int):
        self.signum = signum
        self.exit_code = 128 + signum if signum else 0  # a planned pause (--stop-after) is a success
        what = "interrupted" if signum else "paused"
        super().__init__(f"{what} at step {step}; checkpoint written. Resume with: kdgraph run --resume {run_dir}")


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


@dataclass
class StageRun:
    """What one stage's loop works with: its plan and settings, loaders, the prepared model, step and meter."""

    stage: StagePlan
    epochs: int
    cfg: dict[str, Any]
    train_loader: Loader
    test_loader: Loader
    model: Any  # the graph as Accelerate prepared it (and torch.compile'd with train.compile)
    optimizer: Any
    step: TrainStep
    meter: LossMeter
    names: list[str]  # the stage's loss edges, in the order the step stacks their losses
    log_every: int
    ckpt_every: int
    skip_nan: bool
    caches: OutputCaches | None = None  # train.cache: filled ahead of each epoch that draws new samples
    bar: Any = None  # this epoch's progress (console.py: a bar on a terminal, plain lines otherwise)
    window_start: float = 0.0  # when the current logging window began (throughput)
    images: int = 0  # images seen in the current logging window, over all processes

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class Trainer(RunFiles, InitActions):
    """Trains a checked graph in a run directory, stage by stage; resumes exactly from its checkpoints."""

    spec: GraphSpec | CheckedGraph
    run_dir: Path
    accelerator: Any = None
    log: Any = print
    resume: bool = False
    init_overrides: list[str] = field(default_factory=list)
    stop_after: int | None = None  # pause resumably once this many steps are done in total
    locked: bool = False  # the caller holds the run directory's lock
    checked: CheckedGraph | None = None  # the graph built and dry-run once (check_graph); else built here

    def __post_init__(self) -> None:
        from accelerate import Accelerator

        if isinstance(self.spec, CheckedGraph):  # Trainer(check_graph(path), run_dir)
            self.checked, self.spec = self.spec, self.spec.spec
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

    def _prepare(self) -> None:
        try:
            self.dataset: Dataset = load_dataset(self.spec.data, self.spec.base_dir, int(self.spec.train["seed"]))
        except DataError as e:  # say which line of the graph file asked for it
            raise DataError(self.spec.problem(("data", "dataset"), str(e)).format()) from None
        if self.checked is None:  # seeded, built once and dry-run once, as check_graph does
            self.checked = check_spec(self.spec, self.dataset.info)
        elif self.checked.info != self.dataset.info:
            raise DataError(
                self.spec.problem(
                    ("data", "dataset"),
                    f"the loaded data has {self.dataset.info} but the graph was built for {self.checked.info}",
                ).format()
            )
        self.graph = self.checked.graph  # gradless per stage is set: DDP then needs no find_unused_parameters
        self.info = self.graph.data_info
        self.plan = self.graph.plan

    def _loaders(self, train_cfg: dict[str, Any]) -> tuple[Loader, Loader, Loader]:
        acc = self.accelerator
        views = make_views(self.spec.data.get("views"), self.dataset.image_size, self.dataset.mean)
        return make_loaders(
            self.dataset, self.spec.data, train_cfg, self.device, acc.process_index, acc.num_processes, views
        )

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
                    if not (isinstance(out[port], torch.Tensor) and out[port].dim() == 2):
                        raise RunError(f"evaluated port {port} is {_shape_of(out[port])}, not (batch, classes) scores")
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

    def run(self) -> dict[str, Any]:
        if self.main and not self.locked:  # one process trains in a folder at a time
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with run_lock(self.run_dir):
                self.locked = True
                try:
                    return self.run()
                finally:
                    self.locked = False
        self._check_folder()  # no link out of the folder, not a pre-manifest run: before anything is written
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
        """One stage: setup -> epochs of steps -> end. Everything else is behind the named calls."""
        run = self._setup_stage(pos, resumed)  # loaders, init actions and fits, optimizer, the prepared model
        while pos.epoch <= run.epochs:
            self._start_epoch(run, pos.epoch, pos.batch)  # this epoch's lr, scheduled loss weights, progress
            for batch in run.train_loader.epoch(pos.epoch, run.stage.index, pos.batch):
                self._train_step(run, batch, pos)  # forward, backward, update (on_nan: skip may skip it)
                self._after_step(run, pos, flag)  # NaN check, log, checkpoint, signals: at boundaries only
            self._end_epoch(run, pos)  # evaluate, checkpoint
        self._end_stage(run)  # the unwrapped graph, the stage's results and end weights

    def _setup_stage(self, pos: Position, resumed: dict[str, Any] | None) -> StageRun:
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
        caches = attach_output_caches(
            self.graph, self.spec, stage, train_loader, cfg, acc, self.log, epochs=spec_stage.epochs
        )
        attach_fusion(self.graph, self.spec, stage, cfg, self.log)
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
        log_every = int(cfg["log_every"])
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
        return StageRun(
            stage=stage,
            epochs=spec_stage.epochs,
            cfg=cfg,
            train_loader=train_loader,
            test_loader=test_loader,
            model=model,
            optimizer=optimizer,
            step=TrainStep(acc, model, optimizer, cfg.get("grad_clip")),
            meter=meter,
            names=names,
            log_every=log_every,
            ckpt_every=int(cfg["checkpoint_every"]),
            skip_nan=cfg["on_nan"] == "skip",
            caches=caches or None,
        )

    def _start_epoch(self, run: StageRun, epoch: int, start: int = 0) -> None:
        for group in run.optimizer.param_groups:
            group["lr"] = group_lr(group["base_lr"], run.cfg["lr_schedule"], epoch, run.epochs)
        self.graph.set_epoch(epoch)
        if run.caches is not None:
            run.caches.before_epoch(epoch)
        weights = self.graph.loss_weights()
        run.meter.weights = [weights[n] for n in run.names]  # the NaN check recomputes the weighted total
        run.window_start, run.images = time.perf_counter(), 0
        run.bar = self._bar(run.stage.name, epoch, run.epochs, run.train_loader, start)

    def _train_step(self, run: StageRun, batch: Any, pos: Position) -> None:
        # the hot loop: no host synchronisation (metrics and NaN checks wait for the boundaries)
        total, losses = run.step.forward(batch.image, batch.label, batch.index, batch.variant, batch.views)
        if run.skip_nan and not _finite(total, losses):  # on_nan: skip must decide now: a read-back per step
            run.step.skip()
            self.log(f"  skipped step {pos.step + 1}: non-finite loss")
        else:
            run.step.update(total)
        run.meter.add(losses)
        pos.batch += 1
        pos.step += 1
        run.images += len(batch.label) * self.accelerator.num_processes
        run.bar.update(len(batch.label) * self.accelerator.num_processes)

    def _after_step(self, run: StageRun, pos: Position, flag: dict[str, int]) -> None:
        boundary = pos.step % run.log_every == 0 or pos.batch == len(run.train_loader)
        due = boundary or pos.step % run.ckpt_every == 0
        signum = self._signal_now(flag, due)
        stop = bool(signum) or pos.step == self.stop_after
        if (due or stop) and not run.skip_nan:
            self._check_finite(run.meter.first_bad(self.accelerator), run.names, run.skip_nan)
        if boundary:
            self._log_window(run, pos)
        if pos.step % run.ckpt_every == 0 or stop:
            self._save(pos, run.optimizer, run.meter.state())
        if stop:
            run.close_bar()
            raise Interrupted(signum or None, self.run_dir, pos.step)

    def _signal_now(self, flag: dict[str, int], due: bool) -> int:
        """The signal to honour now (0: none); several processes must agree, so they ask at boundaries only."""
        if self.accelerator.num_processes == 1:
            return flag.get("signum", 0)
        return _agreed_signal(flag, self.accelerator) if due else 0

    def _log_window(self, run: StageRun, pos: Position) -> None:
        means, _ = run.meter.read(self.accelerator)  # the one read-back (and cross-process mean) per window
        now = time.perf_counter()
        rate = run.images / (now - run.window_start)
        run.bar.show(self._log_train(run.stage, pos, run.names, means, run.optimizer, rate), rate)
        run.meter.start(pos.step + 1)
        run.window_start, run.images = now, 0

    def _end_epoch(self, run: StageRun, pos: Position) -> None:
        run.close_bar()
        epoch = pos.epoch
        if epoch % int(run.cfg["eval_every"]) == 0 or epoch == run.epochs:
            result = self.evaluate(run.test_loader)
            if result:
                self._record_eval(run.stage, epoch, pos.step, result)
        pos.epoch, pos.batch = epoch + 1, 0
        self._save(pos, run.optimizer, run.meter.state())

    def _end_stage(self, run: StageRun) -> None:
        run.close_bar()
        stage, acc = run.stage, self.accelerator
        self.graph = acc.unwrap_model(run.model) if not run.cfg["compile"] else self.graph
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
            "peak_memory_mb": peak_memory_mb(self.device),
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
                    "plugins": plugin_records(self.spec.doc.get("plugins"), self.spec.base_dir),
                    "deploy": self.spec.deploy,
                    "data_info": self.info.__dict__.copy(),
                    "normalize": dict(zip(("mean", "std"), map(list, normalization_of(self.dataset, self.spec.data)))),
                    "epoch": max(1, self.spec.stages[-1].epochs),  # scheduled op parameters end at it
                    "summary": summary,
                },
                root=self.run_dir,
            )
            self._manifest().write_new(self.run_dir / "summary.json", json.dumps(summary, indent=2).encode())
        self.accelerator.wait_for_everyone()  # final.pt exists for every process (a cached dependency)
        if self.tracking:
            self.accelerator.end_training()
        return summary


def _shape_of(value: Any) -> str:
    return f"shaped {tuple(value.shape)}" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _summarise(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _agreed_signal(flag: dict[str, int], accelerator: Any) -> int:
    """The signal any process received (0: none), the same on every process (a collective)."""
    mine = torch.tensor([int(flag.get("signum", 0))], device=accelerator.device)
    return int(accelerator.gather(mine).max())


def _finite(total: torch.Tensor, losses: torch.Tensor) -> bool:
    return bool(torch.isfinite(losses).all() & torch.isfinite(total.detach()))
