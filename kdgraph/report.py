"""The paper's table from runs: top-1 as mean ± std over seeds, beside the published number.

    kdgraph report runs/quickstart/sweep-2517ca49                 # Markdown on stdout
    kdgraph report runs/kd/sweep-* --format csv -o table.csv
    kdgraph report RUN_DIR --plot curves.png                      # a single run works too

Each argument is a sweep directory (its ``sweep.json`` names the runs and their variants), a run
directory, or a folder holding run directories. Runs are grouped into variants: a sweep's variants,
otherwise runs of the same graph with the same overrides apart from ``train.seed``. For each variant
and evaluated port of the final stage:

- best top-1: the highest top-1 over the evaluated epochs of a run (what most KD papers report);
- last top-1: the top-1 after the last epoch;
- both as mean ± sample standard deviation (ddof = 1, undefined for n = 1) over the n finished runs;
- the graph's ``published:`` top-1 of the deployed port and the differences (ours − published);
- images/s: each run's median training throughput, averaged over the runs; peak memory: each run's
  largest ``peak_memory_mb`` (CUDA allocator peak, or the process's max RSS on CPU), averaged.

Unfinished runs (no ``summary.json``) are counted in ``unfinished`` and left out of the statistics.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import KDGraphError
from .run_files import read_metrics, read_run_info, read_run_spec, read_sweep_manifest

MANIFEST = "sweep.json"
STD_NOTE = "mean ± sample standard deviation (ddof = 1) over n runs (seeds)"


class ReportError(KDGraphError):
    """Nothing to report: not a run or sweep directory, no finished run."""


@dataclass
class RunResult:
    """What the report reads from one run directory."""

    dir: Path
    name: str
    variant: str | None  # a sweep's variant; None: decided from the overrides
    overrides: list[str]
    finished: bool
    spec: dict[str, Any]
    best: dict[str, float] = field(default_factory=dict)  # port -> best top-1 of the final stage
    last: dict[str, float] = field(default_factory=dict)  # port -> top-1 at the last evaluation
    epochs: int | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None


def read_run(run_dir: Path, variant: str | None = None) -> RunResult:
    """One run's final-stage top-1 (best and last), throughput and peak memory from its files (typed: run_files)."""
    info = read_run_info(run_dir, missing_ok=True)
    saved = read_run_spec(run_dir)
    spec = saved.doc if saved else {}
    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics, within=run_dir) if metrics.exists() or metrics.is_symlink() else []
    run = RunResult(
        run_dir,
        str(info.name or spec.get("name") or run_dir.name),
        variant,
        list(info.overrides),
        (run_dir / "summary.json").is_file(),
        spec,
    )
    evals = [r for r in records if r.get("kind") == "eval"]
    if evals:
        final_stage = evals[-1].get("stage")
        evals = [r for r in evals if r.get("stage") == final_stage]
        for r in evals:
            for port, top1 in (r.get("top1") or {}).items():
                run.best[port] = max(run.best.get(port, -math.inf), float(top1))
        run.last = {p: float(v) for p, v in (evals[-1].get("top1") or {}).items()}
        run.epochs = int(evals[-1].get("epoch", 0)) or None
    train = [r for r in records if r.get("kind") == "train"]
    speeds = [float(r["images_per_s"]) for r in train if isinstance(r.get("images_per_s"), (int, float))]
    peaks = [float(r["peak_memory_mb"]) for r in train if isinstance(r.get("peak_memory_mb"), (int, float))]
    run.images_per_s = statistics.median(speeds) if speeds else None
    run.peak_memory_mb = max(peaks) if peaks else None
    return run


def find_runs(paths: list[str | Path]) -> list[RunResult]:
    """The runs named by sweep directories, run directories and folders of runs, in order."""
    runs: list[RunResult] = []
    for path in map(Path, paths):
        before = len(runs)
        if not path.is_dir():
            raise ReportError(f"{path}: no such directory (give sweep or run directories)")
        if (path / MANIFEST).exists():
            manifest = read_sweep_manifest(path, required=("runs",), job_required=("dir",))  # what a table needs
            runs += [
                read_run(path / r["dir"], r.get("variant") or "")
                for r in manifest["runs"]
                if (path / r["dir"]).is_dir()
            ]
        elif (path / "run.json").exists():
            runs.append(read_run(path))
        else:
            # runs/cache holds the dependencies (teachers) that runs trained first, not results
            found = sorted({p.parent for p in path.glob("**/run.json") if "cache" not in p.relative_to(path).parts})
            runs += [read_run(d) for d in found]
        if len(runs) == before:
            raise ReportError(f"{path}: no run directory in it (kdgraph run and kdgraph sweep write them)")
    return runs


def _without_seed(overrides: list[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+") != "train.seed")


def group_runs(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Variant label -> its runs. A sweep's variant, or the overrides that differ between groups."""
    keys = {id(r): (r.name, r.variant if r.variant is not None else _without_seed(r.overrides)) for r in runs}
    plain = [set(k[1]) for k in keys.values() if isinstance(k[1], tuple)]
    common = set.intersection(*plain) if plain else set()
    groups: dict[str, list[RunResult]] = {}
    for r in runs:
        name, variant = keys[id(r)]
        if isinstance(variant, tuple):
            variant = ",".join(o for o in variant if o not in common)
        groups.setdefault(f"{name} {variant}".strip(), []).append(r)
    return groups


def published_entry(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The `published:` entry of the pair this graph runs ('teacher->student' of the deployed node)."""
    entries = spec.get("published")
    if not entries:
        return None
    entries = entries if isinstance(entries, list) else [entries]
    nodes = spec.get("nodes") or {}
    deployed = nodes.get(str(spec.get("deploy") or "").split(".")[0], {})
    student = deployed.get("net")
    teacher = (nodes.get("teacher") or {}).get("net")
    for pair in (f"{teacher}->{student}", str(student)):
        for e in entries:
            if e.get("pair") == pair:
                return e
    if len(entries) == 1:
        return entries[0]
    return next((e for e in entries if str(e.get("pair", "")).endswith(f"->{student}")), None)


@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None  # sample std, ddof = 1

    def text(self) -> str:
        if self.mean is None:
            return "-"
        return f"{self.mean:.2f} ± {self.std:.2f}" if self.std is not None else f"{self.mean:.2f}"

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": self.values}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def table(runs: list[RunResult]) -> list[dict[str, Any]]:
    """One row per variant and evaluated port: the statistics the report prints."""
    rows = []
    for label, group in group_runs(runs).items():
        done = [r for r in group if r.finished]
        ports: list[str] = []
        for r in done:
            ports += [p for p in r.best if p not in ports]
        spec = (done or group)[0].spec
        deploy = spec.get("deploy")
        entry = published_entry(spec)
        for port in ports:
            with_port = [r for r in done if port in r.best]
            best, last = (
                Stat([r.best[port] for r in with_port]),
                Stat([r.last[port] for r in with_port if port in r.last]),
            )
            # an entry whose top1 is null says the source reports no number for this pair: nothing to compare
            pub = entry if port == deploy and entry and entry.get("top1") is not None else None
            dataset = (spec.get("data") or {}).get("dataset")
            overridden = any(o.lstrip("+").startswith("data.dataset=") for o in (done or group)[0].overrides)
            elsewhere = pub and (pub.get("dataset", dataset) != dataset or (overridden and not pub.get("dataset")))
            rows.append(
                {
                    "variant": label,
                    "port": port,
                    "n": best.n,
                    "unfinished": len(group) - len(done),
                    "best_top1": best.to_json(),
                    "last_top1": last.to_json(),
                    "epochs": max((r.epochs or 0 for r in with_port), default=None) or None,
                    "published": pub,
                    "dataset": dataset,
                    "published_elsewhere": bool(elsewhere),  # the runs use another dataset than the paper
                    "delta_best": best.mean - pub["top1"] if pub and best.mean is not None else None,
                    "delta_last": last.mean - pub["top1"] if pub and last.mean is not None else None,
                    "images_per_s": _mean([r.images_per_s for r in with_port]),
                    "peak_memory_mb": _mean([r.peak_memory_mb for r in with_port]),
                    "runs": [str(r.dir) for r in with_port],
                }
            )
    if not rows:
        unfinished = sum(not r.finished for r in runs)
        shown = ", ".join(str(r.dir) for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        raise ReportError(
            f"{shown}: no finished run with evaluations among {len(runs)} run(s) ({unfinished} unfinished; "
            "a run reports once its metrics.jsonl holds an evaluation)"
        )
    return rows


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table as Markdown, with the statistics and the published sources spelled out below it."""
    head = [
        "variant",
        "port",
        "n",
        "best top-1 (%)",
        "last top-1 (%)",
        "published (%)",
        "Δ best",
        "Δ last",
        "images/s",
        "peak memory (MiB)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    sources: list[str] = []
    for row in rows:
        pub = row["published"]
        mark = ""
        if pub:
            note = _published_note(pub, row)
            if note not in sources:
                sources.append(note)
            mark = f" [{sources.index(note) + 1}]"
        n = f"{row['n']}" + (f" (+{row['unfinished']} unfinished)" if row["unfinished"] else "")
        cells = [
            row["variant"],
            f"`{row['port']}`",
            n,
            Stat(row["best_top1"]["values"]).text(),
            Stat(row["last_top1"]["values"]).text(),
            (_num(pub["top1"]) + mark) if pub else "-",
            _num(row["delta_best"], signed=True),
            _num(row["delta_last"], signed=True),
            _num(row["images_per_s"], 0),
            _num(row["peak_memory_mb"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Top-1 of the final stage: {STD_NOTE}; a single run shows its value. Best: the highest top-1 over the "
        "evaluated epochs; last: after the last epoch. Δ: ours − published (mean). images/s: median training "
        "throughput of each run, averaged; peak memory: CUDA allocator peak (GPU) or max RSS (CPU), averaged.",
    ]
    lines += [f"[{i}] {s}" for i, s in enumerate(sources, 1)]
    return "\n".join(lines) + "\n"


def _published_note(pub: dict[str, Any], row: dict[str, Any]) -> str:
    parts = [str(pub.get("source", "?"))]
    for key in ("pair", "dataset"):
        if pub.get(key):
            parts.append(f"{key} {pub[key]}")
    if row.get("published_elsewhere"):
        parts.append(f"these runs on {row['dataset']}")
    if pub.get("epochs"):
        ran = f"; these runs {row['epochs']}" if row["epochs"] and row["epochs"] != pub["epochs"] else ""
        parts.append(f"{pub['epochs']} epochs{ran}")
    if pub.get("runs"):
        parts.append(f"mean of {pub['runs']} runs")
    if pub.get("note"):
        parts.append(str(pub["note"]))
    return ", ".join(parts)


CSV_FIELDS = [
    "variant",
    "port",
    "n",
    "unfinished",
    "best_mean",
    "best_std",
    "last_mean",
    "last_std",
    "published_top1",
    "published_source",
    "delta_best",
    "delta_last",
    "epochs",
    "images_per_s",
    "peak_memory_mb",
]


def to_csv(rows: list[dict[str, Any]]) -> str:
    """One line per row; std columns are sample standard deviations (ddof = 1), empty for n = 1."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        pub = row["published"] or {}
        writer.writerow(
            {
                **{k: row[k] for k in ("variant", "port", "n", "unfinished", "delta_best", "delta_last", "epochs")},
                "best_mean": row["best_top1"]["mean"],
                "best_std": row["best_top1"]["std"],
                "last_mean": row["last_top1"]["mean"],
                "last_std": row["last_top1"]["std"],
                "published_top1": pub.get("top1"),
                "published_source": pub.get("source"),
                "images_per_s": row["images_per_s"],
                "peak_memory_mb": row["peak_memory_mb"],
            }
        )
    return buf.getvalue()


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"std": "sample standard deviation, ddof = 1", "rows": rows}, indent=2) + "\n"


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    return {"markdown": markdown, "csv": to_csv, "json": to_json}[fmt](rows)


# ----------------------------------------------------------------------------- curves with a band


def plot_bands(runs: list[RunResult], out: str | Path) -> Path:
    """Top-1 of each evaluated port over epochs: per variant, the mean over its runs and a ±1 std band."""
    from .plot import PlotError, _pyplot, load_runs

    plt = _pyplot()
    groups = group_runs(runs)
    curves = {label: load_runs([r.dir for r in group], x="epoch") for label, group in groups.items()}
    ports: list[str] = []
    for runs_of in curves.values():
        for c in runs_of:
            ports += [p for p in c.top1 if p not in ports]
    if not ports:
        raise PlotError("no top-1 evaluations to plot")
    fig, axes = plt.subplots(1, len(ports), figsize=(4.8 * len(ports), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, port in zip(axes[0], ports):
        for i, (label, runs_of) in enumerate(curves.items()):
            series = [c.top1[port] for c in runs_of if port in c.top1]
            if not series:
                continue
            xs = sorted(set.intersection(*(set(s.x) for s in series)))  # epochs every run evaluated
            ys = [[s.y[s.x.index(x)] for s in series] for x in xs]
            mean = [statistics.fmean(v) for v in ys]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in ys]
            color = colors[i % len(colors)]
            ax.plot(xs, mean, color=color, linewidth=1.5, label=f"{label} (n={len(series)})")
            ax.fill_between(
                xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color, alpha=0.2
            )
        ax.set_title(f"top-1 {port} (%)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("mean over seeds, band: ± sample std (ddof = 1)", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    if out.suffix.lstrip(".").lower() not in fig.canvas.get_supported_filetypes():
        raise PlotError(f"cannot plot to {out.name!r}: use .png, .svg or .pdf")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cmd_report(args: argparse.Namespace) -> int:
    fmt = args.format or {".csv": "csv", ".json": "json"}.get(
        Path(args.output).suffix if args.output else "", "markdown"
    )
    runs = find_runs(args.dirs)
    text = render(table(runs), fmt)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    if args.plot:
        print(f"wrote {plot_bands([r for r in runs if r.finished], args.plot)}")
    return 0


def register_cli(sub: Any) -> None:
    """Add `kdgraph report` to the CLI."""
    p = sub.add_parser("report", help="top-1 mean ± std over seeds beside the published number (Markdown/CSV/JSON)")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep directories, run directories or folders of runs")
    p.add_argument("--format", choices=["markdown", "csv", "json"], help="default: from -o's suffix, else markdown")
    p.add_argument("-o", "--output", help="write the table to this file")
    p.add_argument("--plot", metavar="IMAGE", help="also draw the top-1 curves with a band over seeds (.png/.svg/.pdf)")
    p.set_defaults(func=cmd_report)
