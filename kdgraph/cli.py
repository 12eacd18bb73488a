"""kdgraph run | validate | plan | list | draw | plot | export | sweep | report | profile.

Bad input is reported as plain lines on stderr (file:line: path: what (fix)) with exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import draw, plot, report, sweep
from .args import split_args
from .errors import KDGraphError, SpecError
from .last_resort import positive_int, unexpected_error_line


def _graph_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Graph files and overrides, with the overrides of `--pair NAME` (kdgraph/pairs.py) first."""
    files, overrides = split_args(args.items)
    if getattr(args, "pair", None):
        from .pairs import with_pair

        overrides = with_pair(files, overrides, args.pair)
    return files, overrides


def cmd_validate(args: argparse.Namespace) -> int:
    from .check import check_graph
    from .spec import dump_resolved

    files, overrides = _graph_args(args)
    if not files:
        raise SpecError("name at least one graph file")
    failed: list[str] = []
    for f in files:
        try:
            spec, _ = check_graph(f, overrides, dry=not args.no_dry_run)
        except KDGraphError as e:
            failed.extend(e.lines())
            continue
        if args.resolved:
            print(dump_resolved(spec), end="")
        else:
            print(f"{f}: ok ({len(spec.nodes)} nodes, {len(spec.edges)} edges, {len(spec.stages)} stage(s))")
    if failed:
        for line in failed:
            print(line, file=sys.stderr)
        return 2
    return 0


def _count(n: int) -> str:
    return f"{n:,}" if n else "-"


def _views_column(spec: Any) -> dict[str, str]:
    """Per node, the data views it reads ('weak', 'image' for the default view, '-'), when the file declares views."""
    from .views import describe, node_views, view_names

    if not view_names(spec.data):
        return {}
    views = spec.data["views"]
    for name in view_names(spec.data):
        print(f"view {name}: {describe(views[name])}  (port data.{name}.image)")
    return {n: ", ".join(v) or "-" for n, v in node_views(spec.nodes).items()}


def cmd_plan(args: argparse.Namespace) -> int:
    from .check import check_graph
    from .export import deployed_parameter_count, deployed_parts
    from .memory import memory_table
    from .train.cache import cache_plan_lines

    files, overrides = _graph_args(args)
    if len(files) != 1:
        raise SpecError("plan takes one graph file")
    spec, graph = check_graph(files[0], overrides, dry=False)
    plan = graph.plan
    memory = {m.stage: m for m in _memory(spec, graph, args.batch)} if args.memory else {}
    print(f"{spec.name}: {spec.title}")
    if args.pair:
        from .pairs import describe_pair

        print(describe_pair(spec, args.pair))
    seen = _views_column(spec)  # a `view` column when data.views declares views
    for stage in plan.stages:
        stage_spec = spec.stages[stage.index]
        print(f"\nstage {stage.name} ({stage_spec.epochs} epochs; losses: {', '.join(stage.edges) or 'none'})")
        rows = [("order", "node", "kind", "trainable", "no_grad", "parameters", "freed after")]
        if seen:
            rows[0] += ("view",)
        node_steps = [s for s in stage.program if s.kind == "node"]
        for i, step in enumerate(node_steps, 1):
            node = spec.nodes[step.name]
            freed = [s.name for s in stage.program if any(k.startswith(f"{step.name}.") for k in s.free)]
            rows.append(
                (
                    str(i),
                    step.name,
                    f"{node.kind} {node.type}",
                    "yes" if step.name in stage.trainable else ("frozen" if plan.params[step.name] else "-"),
                    "yes" if step.no_grad else "no",
                    _count(plan.params[step.name]),
                    freed[-1] if freed else "-",
                )
                + ((seen[step.name],) if seen else ())
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        for r in rows:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        if stage.fit:
            print(f"  fits: {', '.join(stage.fit)}")
        print(f"  param groups: {', '.join(stage.trainable) or 'none'} (one per node)")
        print(f"  evaluates: {', '.join(stage.eval_ports) or 'nothing'}")
        for line in cache_plan_lines(spec, graph, stage, getattr(graph.data_info, "num_train", None)):
            print(line)
        if stage.name in memory:
            print("\n".join(memory_table(memory[stage.name])))
    if plan.deploy:
        count = deployed_parameter_count(graph)  # a `call` op's copied submodule, not its whole node
        parts = deployed_parts(graph)
        print(f"\ndeploy {plan.deploy}: nodes {', '.join(parts)}; {count:,} deployed parameters")
    return 0


def _memory(spec, graph, batch: int | None) -> list:
    """The memory estimate per stage, or nothing (with the reason) when the graph cannot run on fake tensors."""
    from .memory import estimate_memory

    try:
        return estimate_memory(spec, graph.data_info, batch)
    except Exception as e:  # an op without a fake-tensor kernel, a loss that reads values: no estimate, said so
        print(f"(no memory estimate: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return []


def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import load_builtins
    from .registry import REGISTRIES

    if args.kind == "pairs":
        from .pairs import format_rows, pair_rows

        if not args.graph:
            raise SpecError("list pairs takes a graph file: kdgraph list pairs graphs/dkd.yaml")
        print(format_rows(pair_rows(args.graph)), end="")
        return 0
    load_builtins()
    if getattr(args, "markdown", False):
        from .docs import reference_markdown

        text = reference_markdown()
        if args.output:
            Path(args.output).write_text(text)
            print(f"wrote {args.output}")
        else:
            print(text, end="")
        return 0
    kinds = [args.kind] if args.kind else ["nets", "ops", "losses", "datasets"]
    for kind in kinds:
        registry = REGISTRIES[kind]
        print(f"{kind} ({len(registry.names())}):")
        width = max((len(n) for n in registry.names()), default=0)
        for entry in registry.entries():
            extra = _net_details(entry) if kind == "nets" else ""
            print(f"  {entry.name.ljust(width)}  {entry.description}{extra}")
    return 0


def _net_details(entry) -> str:
    import torch

    from .nets.base import PortNet

    try:
        with torch.device("meta"):
            net = entry.obj(**({"num_classes": 100} if "num_classes" in entry.parameters() else {}))
    except Exception as e:  # a net that cannot be built with defaults: say so, keep listing
        return f"  [cannot build with defaults: {e}]"
    count = sum(p.numel() for p in net.parameters())
    ports = list(net.port_info()) if isinstance(net, PortNet) else ["logits"]
    return f"  [{count:,} params; ports {_compact_ports(ports)}]"


def _compact_ports(ports: list[str]) -> str:
    """'logits, pooled, feat0..4, preact0..4' rather than every numbered port."""
    import re

    groups: dict[str, list[int]] = {}
    plain = []
    for p in ports:
        m = re.fullmatch(r"([a-z]+)(\d+)", p)
        if m:
            groups.setdefault(m.group(1), []).append(int(m.group(2)))
        else:
            plain.append(p)
    ranged = [f"{k}{min(v)}..{max(v)}" if len(v) > 1 else f"{k}{v[0]}" for k, v in groups.items()]
    return ", ".join(plain + ranged)


def cmd_run(args: argparse.Namespace) -> int:
    from .check import check_graph
    from .train import Trainer, new_run_dir

    files, overrides = _graph_args(args)
    if args.resume:
        if files or overrides:
            raise SpecError("--resume RUN_DIR takes no graph file or overrides: they are read from the run")
        from .run_guard import check_spec_unchanged, read_run_info
        from .spec import dump_resolved

        run_dir = Path(args.resume)
        source, saved = read_run_info(run_dir)
        checked = check_graph(source, saved)  # built once and dry-run once, as a fresh run
        spec = checked.spec
        check_spec_unchanged(run_dir, dump_resolved(spec), spec.hash())
        trainer = Trainer(checked, run_dir, resume=True, stop_after=args.stop_after)
        created = False
    else:
        if len(files) != 1:
            raise SpecError("run takes one graph file (and key=value overrides)")
        checked = check_graph(files[0], overrides)  # every problem before any directory is made
        spec = checked.spec
        created = not (args.out and Path(args.out).exists())
        run_dir = new_run_dir(spec, args.out, args.force)
        trainer = Trainer(checked, run_dir, stop_after=args.stop_after)
    say = print if trainer.main else (lambda *_: None)  # one report, not one per process
    say(f"run {spec.name} -> {run_dir}")
    try:
        summary = trainer.run()
    except KDGraphError:
        if created:
            _discard_unstarted(run_dir)
        raise
    final = summary.get("final", {}).get("top1", {})
    for port, top1 in final.items():
        best = summary["best_top1"].get(port, top1)
        say(f"{port}: top-1 {top1:.2f}% (best {best:.2f}%)")
    say(f"done: {run_dir}")
    return 0


def _discard_unstarted(run_dir: Path) -> None:
    """A run that failed before its first checkpoint leaves no folder behind (there is nothing to resume)."""
    from .checkpoint import has_checkpoint
    from .run_guard import remove_run_files

    if has_checkpoint(run_dir / "checkpoints"):
        return
    remove_run_files(run_dir)
    try:
        run_dir.rmdir()
    except OSError:  # something else is in it: leave it
        pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdgraph", description="Declarative graph-of-networks knowledge distillation.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a graph file (or resume a run)")
    run.add_argument("items", nargs="*", metavar="GRAPH|key=value", help="graph file and overrides")
    run.add_argument("--out", help="run directory (default runs/<name>/<time>)")
    run.add_argument("--force", action="store_true", help="overwrite a non-empty --out directory")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    run.add_argument(
        "--stop-after", type=positive_int, metavar="STEPS", help="pause resumably after STEPS steps in total"
    )
    run.set_defaults(func=cmd_run)

    val = sub.add_parser("validate", help="schema, meaning and a dry run on a tiny batch")
    val.add_argument("items", nargs="+", metavar="GRAPH|key=value")
    val.add_argument("--resolved", action="store_true", help="print the resolved graph (vars, overrides, extends)")
    val.add_argument("--no-dry-run", action="store_true", help="skip the shape-checking dry run")
    val.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="show the execution plan of each stage")
    pl.add_argument("items", nargs="+", metavar="GRAPH|key=value")
    pl.add_argument("--batch", type=int, help="batch size of the memory estimate (default: data.batch_size)")
    pl.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the memory estimate (a step on fake tensors)"
    )
    pl.set_defaults(func=cmd_plan)
    for sp in (run, val, pl):
        sp.add_argument("--pair", metavar="NAME", help="a teacher-student pair from the graph file's `pairs:` table")

    ls = sub.add_parser("list", help="list registered nets, ops, losses and datasets")
    ls.add_argument("kind", nargs="?", choices=["nets", "ops", "losses", "datasets", "pairs"])
    ls.add_argument("graph", nargs="?", help="with pairs: the graph file whose `pairs:` table to show")
    ls.add_argument("--markdown", action="store_true", help="the reference documentation as Markdown")
    ls.add_argument("-o", "--output", help="with --markdown: write to this file")
    ls.set_defaults(func=cmd_list)

    draw.register_cli(sub)
    plot.register_cli(sub)
    _register_export(sub)
    sweep.register_cli(sub)
    report.register_cli(sub)
    _register_profile(sub)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    from .export import cmd_export as export

    return export(args)


def _register_export(sub: Any) -> None:
    """``kdgraph export RUN_DIR -o model.pt`` (declared here: the export module imports torch)."""
    p = sub.add_parser("export", help="export the deployed slice of a finished run as a standalone module")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (with final.pt)")
    p.add_argument("-o", "--output", metavar="OUT.pt", help="output file (default RUN_DIR/model.pt)")
    p.add_argument("--port", help="export this port instead of the graph's deploy port")
    p.add_argument("--no-torchscript", action="store_true", help="do not write the traced OUT.ts")
    p.add_argument("--check", action="store_true", help="evaluate the export on the run's test split and compare")
    p.set_defaults(func=cmd_export)


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import cmd_profile as profile

    return profile(args)


def _register_profile(sub: Any) -> None:
    """``kdgraph profile GRAPH`` (declared here: the profile module imports torch)."""
    p = sub.add_parser("profile", help="time per node, loss, backward and optimizer; memory; images/s")
    p.add_argument("items", nargs="+", metavar="GRAPH|key=value", help="graph file and overrides")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each kind (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--stage", help="the stage to profile (default: the last)")
    p.add_argument("--format", choices=["text", "markdown"], default="text")
    p.add_argument("-o", "--output", help="write the table to this file")
    p.set_defaults(func=cmd_profile)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KDGRAPH_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may follow options (`run g.yaml --out d train.epochs=2`): argparse leaves them over
    if extra and hasattr(args, "items") and not any(a.startswith("-") for a in extra):
        args.items = list(args.items) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, where it is handled, not at exit
        return code
    except KDGraphError as e:
        for line in e.lines():
            print(line, file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except BrokenPipeError:  # `kdgraph list | head`: the reader is gone, which is no error (before OSError: a subclass)
        _silence_stdout()
        return 0
    except OSError as e:  # the environment, not the graph: a full disk, a read-only or missing folder
        where = f"{e.filename}: " if e.filename else ""
        print(f"kdgraph: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: a bug or a broken plugin, one line unless --debug
        if debug:
            raise
        print(unexpected_error_line(e), file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit raises no second BrokenPipeError."""

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
