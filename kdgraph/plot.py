"""Curves of runs: loss per edge, total loss, learning rate and top-1 per evaluated port, runs overlaid.

    kdgraph plot runs/kd/20260101-120000 runs/slkd/20260102-090000 -o compare.png
    kdgraph plot RUN_DIR -o curves.png --x epoch

Reads each run's ``metrics.jsonl`` (``kind: train`` records carry ``loss``, ``losses`` and ``lr``;
``kind: eval`` records carry ``top1``). Needs matplotlib: ``pip install 'kdgraph[plot]'``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import KDGraphError
from .run_files import read_metrics, read_run_info

LINESTYLES = ("-", "--", ":", "-.")


class PlotError(KDGraphError):
    """Runs cannot be plotted (not a run directory, no metrics, matplotlib missing, unknown format)."""


@dataclass
class Series:
    """One curve: x values and y values."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def add(self, x: float, y: Any) -> None:
        if isinstance(y, (int, float)) and math.isfinite(y):
            self.x.append(x)
            self.y.append(float(y))


@dataclass
class RunCurves:
    """Everything plotted of one run, keyed by panel."""

    label: str
    total: Series = field(default_factory=Series)
    losses: dict[str, Series] = field(default_factory=dict)  # edge name -> curve
    lr: dict[str, Series] = field(default_factory=dict)  # param group (node) -> curve
    top1: dict[str, Series] = field(default_factory=dict)  # port -> curve
    stage_starts: list[tuple[float, str]] = field(default_factory=list)  # (x, stage) of later stages


def epoch_axis(records: list[dict[str, Any]]) -> list[float | None]:
    """Each record's position in epochs over all stages: eval at the epoch's end, train records in between.

    Epochs restart at 1 in every stage, so a stage's epochs are offset by the epochs of the stages
    before it; within an epoch, a train record sits at the fraction of the epoch's steps done.
    """
    stages: list[str] = []
    end_step: dict[tuple[str, int], int] = {}  # (stage, epoch) -> last step logged in it
    for r in records:
        stage = r.get("stage", "main")
        if stage not in stages:
            stages.append(stage)
        if "epoch" in r and "step" in r:
            key = (stage, int(r["epoch"]))
            end_step[key] = max(end_step.get(key, 0), int(r["step"]))
    offset, start_step, epochs_of = {}, {}, {}
    total, last = 0, 0
    for stage in stages:
        epochs = sorted(e for s, e in end_step if s == stage)
        offset[stage], start_step[stage] = total, last
        epochs_of[stage] = epochs
        if epochs:
            total += epochs[-1]
            last = end_step[(stage, epochs[-1])]
    out: list[float | None] = []
    for r in records:
        stage = r.get("stage", "main")
        if "epoch" not in r or "step" not in r:
            out.append(None)
            continue
        epoch, step = int(r["epoch"]), int(r["step"])
        before = [e for e in epochs_of[stage] if e < epoch]
        begin = end_step[(stage, before[-1])] if before else start_step[stage]
        end = end_step[(stage, epoch)]
        fraction = 1.0 if r.get("kind") == "eval" or end == begin else (step - begin) / (end - begin)
        out.append(offset[stage] + epoch - 1 + fraction)
    return out


def run_curves(records: list[dict[str, Any]], label: str, x: str = "step") -> RunCurves:
    """The curves of one run's metrics records, against optimizer steps or epochs."""
    xs = epoch_axis(records) if x == "epoch" else [r.get("step") for r in records]
    curves = RunCurves(label)
    stage, last = None, None
    for r, at in zip(records, xs):
        if at is None:
            continue
        if r.get("stage") != stage:
            if stage is not None:  # a stage starts where the previous one's last record is
                curves.stage_starts.append((float(last), r.get("stage", "")))
            stage = r.get("stage")
        last = at
        if r.get("kind") == "train":
            curves.total.add(at, r.get("loss"))
            for name, value in (r.get("losses") or {}).items():
                curves.losses.setdefault(name, Series()).add(at, value)
            for group, value in (r.get("lr") or {}).items():
                curves.lr.setdefault(group, Series()).add(at, value)
        elif r.get("kind") == "eval":
            for port, value in (r.get("top1") or {}).items():
                curves.top1.setdefault(port, Series()).add(at, value)
    return curves


def run_label(run_dir: Path) -> str:
    """'<graph name>/<run folder>' from run.json, or the folder's path."""
    run_json = run_dir / "run.json"
    name = read_run_info(run_dir).name if run_json.exists() or run_json.is_symlink() else None
    return f"{name}/{run_dir.name}" if name and name != run_dir.name else str(run_dir)


def load_runs(run_dirs: list[str | Path], labels: list[str] | None = None, x: str = "step") -> list[RunCurves]:
    """Read each run directory's metrics.jsonl; labels default to '<name>/<folder>', made unique."""
    dirs = [Path(d) for d in run_dirs]
    if labels and len(labels) != len(dirs):
        raise PlotError(f"{len(labels)} --label for {len(dirs)} run directories: give one per run")
    names = list(labels) if labels else [run_label(d) for d in dirs]
    if not labels and len(set(names)) != len(names):
        names = [str(d) for d in dirs]
    runs = []
    for d, name in zip(dirs, names):
        metrics = d / "metrics.jsonl"
        if not d.is_dir():
            raise PlotError(f"{d}: no such run directory")
        if not metrics.exists() and not metrics.is_symlink():
            raise PlotError(f"{d}: no metrics.jsonl (is it a run directory? kdgraph run writes one)")
        records = read_metrics(metrics, within=d)
        if not records:
            raise PlotError(f"{metrics}: no records yet")
        runs.append(run_curves(records, name, x))
    return runs


def _union(runs: list[RunCurves], attr: str) -> list[str]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in getattr(run, attr) if k not in keys]
    return keys


def panels(runs: list[RunCurves]) -> list[tuple[str, str, str | None]]:
    """(title, kind, key) of each panel: total loss, each loss edge, learning rate, top-1 of each port."""
    out: list[tuple[str, str, str | None]] = [("total loss (weighted)", "total", None)]
    out += [(f"loss {name}", "losses", name) for name in _union(runs, "losses")]
    if any(run.lr for run in runs):
        out.append(("learning rate", "lr", None))
    out += [(f"top-1 {port} (%)", "top1", port) for port in _union(runs, "top1")]
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("kdgraph plot needs matplotlib: pip install 'kdgraph[plot]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _series(run: RunCurves, kind: str, key: str | None) -> dict[str, Series]:
    """The curves of one panel for one run: one, or one per param group for the learning rate."""
    if kind == "total":
        return {"": run.total}
    if kind == "lr":
        return run.lr
    found = getattr(run, kind).get(key)
    return {"": found} if found else {}


def make_figure(runs: list[RunCurves], x: str = "step", logy: bool = False):
    """A matplotlib Figure with one panel per curve kind; colours name the runs, line styles the lr groups."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    layout = panels(runs)
    groups = _union(runs, "lr")
    cols = min(3, len(layout))
    rows = math.ceil(len(layout) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows + 0.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel_title, kind, key) in zip(axes.flat, layout):
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch" if x == "epoch" else "step")
        ax.grid(alpha=0.3)
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            for group, s in _series(run, kind, key).items():
                style = LINESTYLES[groups.index(group) % len(LINESTYLES)] if kind == "lr" else "-"
                marker = "o" if kind == "top1" and len(s.x) < 30 else None
                ax.plot(s.x, s.y, style, color=color, marker=marker, markersize=3, linewidth=1.4, gid=run.label)
            for at, stage in run.stage_starts:
                ax.axvline(at, color=color, linestyle=":", alpha=0.5, gid=f"stage:{stage}")
                if kind == "total":
                    ax.annotate(
                        stage,
                        (at, 1),
                        xycoords=("data", "axes fraction"),
                        xytext=(2, -2),
                        textcoords="offset points",
                        fontsize=7,
                        color=color,
                        va="top",
                    )
        if logy and kind in ("total", "losses"):
            ax.set_yscale("log")
        if kind == "top1":  # matplotlib's margin would draw an axis past 100 %
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, 0.0), min(high, 100.0))
        if kind == "lr" and len(groups) > 1:
            styles = [
                Line2D([], [], color="black", linestyle=LINESTYLES[j % len(LINESTYLES)]) for j in range(len(groups))
            ]
            ax.legend(styles, groups, fontsize=7)
    for ax in list(axes.flat)[len(layout) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colors[i % len(colors)], linewidth=2) for i in range(len(runs))]
    fig.legend(handles, [r.label for r in runs], loc="upper center", ncol=min(len(runs), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # room for the run legend
    return fig


def plot_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    *,
    x: str = "step",
    labels: list[str] | None = None,
    logy: bool = False,
) -> Path:
    """Plot the runs' curves into `out` (format from its suffix: .png, .svg, .pdf)."""
    out = Path(out)
    runs = load_runs(run_dirs, labels, x)
    fig = make_figure(runs, x, logy)
    supported = fig.canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in supported:
        raise PlotError(f"cannot plot to {out.name!r}: use .png, .svg or .pdf")
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def cmd_plot(args: argparse.Namespace) -> int:
    out = plot_runs(args.runs, args.output, x=args.x, labels=args.label, logy=args.logy)
    print(f"wrote {out} ({len(args.runs)} run{'s' if len(args.runs) != 1 else ''})")
    return 0
