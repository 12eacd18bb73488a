"""Seeds × overrides: a grid of normal runs under one sweep directory, resumable at any moment.

    kdgraph sweep graphs/quickstart.yaml --seeds 3
    kdgraph sweep graphs/kd.yaml --seeds 5 vars.T=2,4,8 --out runs/kd-T
    kdgraph sweep graphs/kd.yaml --seeds 3 --launcher submitit --slurm-partition gpu

An item whose value has a comma outside brackets and quotes (``vars.T=2,4,8``) is an axis of the
grid; every other item is an override of every run. Each (variant, seed) is one ordinary run
directory made by ``kdgraph run`` in its own process (``train.seed`` = the graph's seed + i), named
``<variant>_seed<S>`` inside the sweep directory, which also holds ``sweep.json`` (the manifest).

Running the same command again finishes the sweep: a run with ``summary.json`` is done and skipped,
a run with ``run.json`` is continued with ``kdgraph run --resume`` (exactly where it stopped), any
other is started. More seeds on the same sweep directory add runs. Runs go one after another, or one
per GPU in parallel when several are visible, or to SLURM through submitit (``kdgraph.cluster``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .args import count, split_args
from .errors import RunError, SpecError
from .run_files import JOB, read_sweep_manifest

MANIFEST = "sweep.json"
INTERRUPTED = (130, 143)  # 128 + SIGINT, 128 + SIGTERM: the run checkpointed and stopped on request
BAD_INPUT = 2  # kdgraph's status for a bad graph, data or checkpoint: stop rather than repeat it per run


@dataclass
class Job:
    """One run of the sweep: its folder (relative to the sweep directory), variant, seed and overrides."""

    dir: str
    variant: str
    params: dict[str, str]
    seed: int
    overrides: list[str]

    def state(self, root: Path) -> str:
        """'done' (summary.json), 'partial' (run.json: resume it) or 'new'."""
        folder = root / self.dir
        if (folder / "summary.json").is_file():
            return "done"
        run_json = folder / "run.json"
        return "partial" if run_json.exists() or run_json.is_symlink() else "new"  # a bad one: --resume says why

    def argv(self, root: Path, graph: str) -> list[str]:
        """The `kdgraph run` command line that starts or continues this run."""
        folder = str(root / self.dir)
        if self.state(root) == "partial":
            return ["run", "--resume", folder, *named_plugins(graph)]
        return ["run", graph, *self.overrides, "--out", folder, "--force"]  # --force only ever empties a run folder


def named_plugins(graph: str) -> list[str]:
    """``--plugins FILE ...`` for resuming a run of the sweep: the plugin files its graph file names now.

    A run folder imports no plugin by itself (kdgraph/plugin_trust.py); the sweep's graph file is named
    on the command line, so its plugins are passed again (their SHA-256 must match the run's).
    """
    from .catalog import is_file_plugin
    from .errors import KDGraphError
    from .spec import Locator, load_document

    try:
        doc = load_document(graph, [], Locator(default_file=graph))  # YAML only: nothing is imported
    except (KDGraphError, OSError):
        return []  # the run's own resume reports what is wrong
    names = [n for n in doc.get("plugins") or [] if isinstance(n, str) and n.strip()]
    named = [str(Path(graph).parent / n) if is_file_plugin(n) else n for n in names]
    return ["--plugins", *named] if named else []


@dataclass
class Sweep:
    """The manifest: graph, overrides of every run, the grid's axes, seeds and the runs."""

    graph: str
    name: str
    overrides: list[str]
    grid: dict[str, list[str]]
    seeds: list[int]
    jobs: list[Job] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kdgraph_sweep": 1,
            "graph": self.graph,
            "name": self.name,
            "overrides": self.overrides,
            "grid": self.grid,
            "seeds": self.seeds,
            "runs": [asdict(j) for j in self.jobs],
        }

    def key(self) -> str:
        """What identifies a sweep (not its seeds: more seeds extend it)."""
        blob = json.dumps([self.graph, self.overrides, self.grid], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


# ----------------------------------------------------------------------------- the grid


def split_values(value: str) -> list[str]:
    """'2,4,[1,2]' -> ['2', '4', '[1,2]']: commas inside brackets, braces or quotes do not split."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(value):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return [p.strip() for p in parts]


def parse_items(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(overrides of every run, grid axes key -> values) from `key=v` and `key=v1,v2` items."""
    fixed: list[str] = []
    grid: dict[str, list[str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        values = split_values(value) if eq else [value]
        if key.lstrip("+~") == "train.seed":
            raise SpecError(f"{item}: the sweep sets train.seed itself; use --seeds N")
        if len(values) > 1:
            if key in grid:
                raise SpecError(f"{key} is given twice; list all its values once: {key}=v1,v2")
            if any(v == "" for v in values):
                raise SpecError(f"{item}: an empty value in the list (a trailing comma?)")
            grid[key] = values
        else:
            fixed.append(item)
    return fixed, grid


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last component of each key ('vars.T' -> 'T'), the whole key where two would clash."""
    tails = [k.lstrip("+~").rsplit(".", 1)[-1] for k in keys]
    return {k: (t if tails.count(t) == 1 else k.lstrip("+~")) for k, t in zip(keys, tails)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_")[:80]


def variants(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, in the order given (the first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def variant_name(params: dict[str, str]) -> str:
    short = _short_keys(list(params))
    return ",".join(f"{short[k]}={v}" for k, v in params.items())


def make_sweep(graph: str, items: list[str], seeds: int) -> Sweep:
    """The sweep of `graph` × the grid in `items` × `seeds` seeds; every variant is loaded (typos fail here)."""
    from .spec import load_spec

    if seeds < 1:
        raise SpecError("--seeds must be at least 1")
    fixed, grid = parse_items(items)
    source = str(Path(graph).resolve())
    base = load_spec(graph, fixed)
    first = int(base.train["seed"])
    sweep = Sweep(source, base.name, fixed, grid, [first + i for i in range(seeds)])
    for params in variants(grid):
        overrides = fixed + [f"{k}={v}" for k, v in params.items()]
        load_spec(graph, overrides)  # a bad value or key in the grid stops the sweep before any run
        name = variant_name(params)
        for seed in sweep.seeds:
            folder = _slug(f"{name}_seed{seed}" if name else f"seed{seed}")
            sweep.jobs.append(Job(folder, name, params, seed, [*overrides, f"train.seed={seed}"]))
    return sweep


def open_sweep(sweep: Sweep, out: str | Path | None) -> Path:
    """The sweep directory: made with its manifest, or an earlier one of the same sweep, extended."""
    root = Path(out) if out else Path("runs") / sweep.name / f"sweep-{sweep.key()}"
    manifest = root / MANIFEST
    if manifest.exists() or manifest.is_symlink():
        old = read_sweep_manifest(root, fix="; choose another --out")  # typed: a malformed one is one line
        mine = sweep.to_json()
        for k in ("graph", "overrides", "grid"):
            if old.get(k) != mine[k]:
                raise RunError(
                    f"{root} holds another sweep ({k}: {old.get(k)!r}, now {mine[k]!r}); "
                    "choose another --out or repeat the original command"
                )
        known = {r["dir"] for r in mine["runs"]}
        earlier = [Job(**{k: r[k] for k in JOB}) for r in old["runs"] if r["dir"] not in known]
        sweep.jobs = earlier + sweep.jobs  # runs of more seeds asked for earlier are kept
        sweep.seeds = sorted(set(old["seeds"]) | set(sweep.seeds))
    elif root.exists() and any(root.iterdir()):
        raise RunError(f"{root} exists, is not empty and holds no {MANIFEST}; choose another --out")
    root.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
    os.replace(tmp, manifest)  # a sweep killed while writing keeps its previous manifest
    return root


def load_manifest(root: Path) -> Sweep:
    """The sweep a directory's sweep.json describes."""
    data = read_sweep_manifest(root)
    jobs = [Job(**{k: r[k] for k in JOB}) for r in data["runs"]]
    return Sweep(data["graph"], data["name"], data["overrides"], data["grid"], data["seeds"], jobs)


# ----------------------------------------------------------------------------- running


def kdgraph_command(argv: list[str]) -> list[str]:
    """`kdgraph ARGV` as a command of this Python (the same installation, the same PYTHONPATH)."""
    return [sys.executable, "-m", "kdgraph", *argv]


def visible_gpus() -> list[str]:
    """CUDA devices this process may use (none under KDGRAPH_CPU=1)."""
    if os.environ.get("KDGRAPH_CPU") == "1":
        return []
    import torch

    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def dependency_waves(sweep: Sweep, jobs: list[Job]) -> list[list[Job]]:
    """Two waves when runs train a shared dependency (`init: from`, cached by its spec): one run per
    data setting first, so that the dependency is trained once, then all the others in parallel."""
    if '"from"' not in json.dumps(_inits(sweep.graph)):
        return [jobs]
    first: dict[tuple, Job] = {}
    for job in jobs:
        first.setdefault(tuple(o for o in job.overrides if o.lstrip("+~").startswith("data.")), job)
    leaders = list(first.values())
    return [leaders, [j for j in jobs if j not in leaders]]


def _inits(graph: str) -> list[Any]:
    from . import yaml12

    doc, _, _ = yaml12.parse(yaml12.read_graph_text(Path(graph)), graph)  # load_spec has read it: it is a graph
    doc = doc if isinstance(doc, dict) else {}
    nodes = [n.get("init") for n in (doc.get("nodes") or {}).values() if isinstance(n, dict)]
    stages = [s.get("init") for s in (doc.get("stages") or []) if isinstance(s, dict)]
    return [i for i in nodes + stages if i]


def run_sequential(root: Path, sweep: Sweep, jobs: list[Job], say=print) -> dict[str, int]:
    """Each run in its own process, one after another; an interrupted run or bad input stops the sweep."""
    results: dict[str, int] = {}
    for i, job in enumerate(jobs, 1):
        say(f"[{i}/{len(jobs)}] {job.dir}: {'resuming' if job.state(root) == 'partial' else 'starting'}")
        with _forwarded_sigterm() as children:
            proc = subprocess.Popen(kdgraph_command(job.argv(root, sweep.graph)))
            children.append(proc)
            try:
                rc = proc.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the run too: let it finish its checkpoint
                rc = proc.wait()
        results[job.dir] = rc
        if rc in INTERRUPTED or rc == BAD_INPUT:  # the next runs would stop the same way
            break
    return results


def run_parallel(root: Path, sweep: Sweep, jobs: list[Job], gpus: list[str], say=print) -> dict[str, int]:
    """One run per GPU at a time (CUDA_VISIBLE_DEVICES), each logging to logs/<run>.log."""
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, int] = {}
    with _forwarded_sigterm() as children:
        for wave in dependency_waves(sweep, jobs):
            pending, running = list(wave), {}  # gpu -> (job, process, log file)
            while pending or running:
                for gpu in [g for g in gpus if g not in running][: len(pending)]:
                    job = pending.pop(0)
                    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
                    log = open(logs / f"{job.dir}.log", "a")
                    proc = subprocess.Popen(
                        kdgraph_command(job.argv(root, sweep.graph)), env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                    children.append(proc)
                    running[gpu] = (job, proc, log)
                    say(f"{job.dir}: started on GPU {gpu} (log: {logs / job.dir}.log)")
                for gpu, (job, proc, log) in list(running.items()):
                    if proc.poll() is not None:
                        log.close()
                        results[job.dir] = proc.returncode
                        del running[gpu]
                        say(f"{job.dir}: {_outcome(proc.returncode)}")
                        if proc.returncode in INTERRUPTED or proc.returncode == BAD_INPUT:
                            pending.clear()
                try:
                    time.sleep(0.5)
                except KeyboardInterrupt:  # Ctrl-C reached the runs too: they checkpoint and stop
                    pending.clear()
            if any(rc in INTERRUPTED or rc == BAD_INPUT for rc in results.values()):
                break
    return results


class _forwarded_sigterm:
    """While runs are going, a SIGTERM to the sweep goes to them too: each checkpoints and stops."""

    def __enter__(self) -> list[subprocess.Popen]:
        self.children: list[subprocess.Popen] = []

        def forward(signum, _frame):
            for child in self.children:
                if child.poll() is None:
                    child.send_signal(signum)

        try:
            self.old = signal.signal(signal.SIGTERM, forward)
        except ValueError:  # not the main thread
            self.old = None
        return self.children

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _outcome(rc: int) -> str:
    if rc == 0:
        return "done"
    return "interrupted (resumable)" if rc in INTERRUPTED else f"failed (exit status {rc})"


def run_sweep(
    graph: str,
    items: list[str],
    seeds: int,
    out: str | Path | None = None,
    launcher: str = "local",
    cluster: dict[str, Any] | None = None,
    say=print,
) -> tuple[Path, dict[str, int]]:
    """Make or reopen the sweep, then run what is not done. Returns (sweep dir, exit status per run run)."""
    sweep = make_sweep(graph, items, seeds)
    root = open_sweep(sweep, out)
    states = {j.dir: j.state(root) for j in sweep.jobs}
    done = [d for d, s in states.items() if s == "done"]
    todo = [j for j in sweep.jobs if states[j.dir] != "done"]
    say(f"sweep {sweep.name} -> {root}: {len(sweep.jobs)} runs, {len(done)} done, {len(todo)} to run")
    for d in done:
        say(f"  {d}: done, skipped")
    if not todo:
        return root, {}
    if launcher == "submitit":
        from .cluster import run_submitit

        return root, run_submitit(root, dependency_waves(sweep, todo), sweep.graph, sweep.name, cluster or {}, say)
    gpus = visible_gpus()
    if len(gpus) > 1:
        return root, run_parallel(root, sweep, todo, gpus, say)
    return root, run_sequential(root, sweep, todo, say)


def cmd_sweep(args: argparse.Namespace) -> int:
    files, items = split_args(args.items)
    if len(files) != 1:
        raise SpecError("sweep takes one graph file (then key=value or key=v1,v2 items)")
    cluster = {
        k: v
        for k, v in {
            "slurm_partition": args.slurm_partition,
            "timeout_min": args.timeout_min,
            "gpus_per_node": args.gpus_per_job,
            "cluster": args.cluster,
        }.items()
        if v is not None
    }
    root, results = run_sweep(files[0], items, args.seeds, args.out, args.launcher, cluster)
    failed = {d: rc for d, rc in results.items() if rc != 0}
    if any(rc in INTERRUPTED for rc in failed.values()):
        print(f"sweep interrupted; run the same command again to finish it ({root})", file=sys.stderr)
        return max(rc for rc in failed.values() if rc in INTERRUPTED)
    for d, rc in failed.items():
        print(f"{root / d}: failed (exit status {rc}); rerun the sweep to retry it", file=sys.stderr)
    print(f"report: kdgraph report {root}")
    return 1 if failed else 0


def register_cli(sub: Any) -> None:
    """Add `kdgraph sweep` to the CLI."""
    p = sub.add_parser("sweep", help="run a graph over seeds and a grid of overrides (resumable)")
    p.add_argument("items", nargs="+", metavar="GRAPH|key=v|key=v1,v2", help="graph file, overrides, grid axes")
    p.add_argument(
        "--seeds", type=count(1, 10_000), default=1, help="seeds per variant: train.seed = the graph's seed + 0..N-1"
    )
    p.add_argument("--out", help="sweep directory (default runs/<name>/sweep-<id of graph and grid>)")
    p.add_argument(
        "--launcher", choices=["local", "submitit"], default="local", help="local processes, or SLURM via submitit"
    )
    p.add_argument("--slurm-partition", help="submitit: the SLURM partition")
    p.add_argument("--timeout-min", type=count(1), help="submitit: time limit of each run's job, minutes")
    p.add_argument("--gpus-per-job", type=count(1, 1024), help="submitit: GPUs of each run's job (default 1)")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], help="submitit: executor (default: auto)")
    p.set_defaults(func=cmd_sweep)
