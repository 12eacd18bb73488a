"""kdgraph run | validate | plan | list | draw | plot | export | sweep | report | profile.

Bad input is reported as plain lines on stderr (file:line: path: what (fix)) with exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from . import report, sweep  # torch-free modules that declare their own commands
from .args import count, split_args, with_preset
from .errors import KDGraphError, SpecError
from .last_resort import unexpected_error_line
from .plugin_trust import add_options as plugin_options


def _graph_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Graph files and overrides: `--pair NAME`'s (kdgraph/pairs.py), then `--preset NAME`, then the command line's.

    The pair names zoo nets; the preset after it maps them to its small ones; the user's overrides win.
    """
    files, overrides = split_args(args.items)
    pair: list[str] = []
    if getattr(args, "pair", None):
        from .pairs import with_pair

        pair = with_pair(files, [], args.pair)
    return files, pair + with_preset(args, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    from .check import check_graph
    from .initcheck import check_inits
    from .spec import dump_resolved

    files, overrides = _graph_args(args)
    if not files:
        raise SpecError("name at least one graph file")
    failed: list[str] = []
    for f in files:
        try:
            checked = check_graph(f, overrides, dry=not args.no_dry_run, weights=False)  # nothing trains it
            spec = checked.spec
            if not args.no_dry_run:
                check_inits(spec, checked.graph)  # what each init would load fits its node: nothing trained
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
    from .train.fusion import fusion_plan_lines

    files, overrides = _graph_args(args)
    if len(files) != 1:
        raise SpecError("plan takes one graph file")
    spec, graph = check_graph(files[0], overrides, dry=False, weights=False)  # shapes and counts: no init
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
        for line in fusion_plan_lines(spec, graph, stage):
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
    from .memory_cache import cached_estimate

    try:
        return cached_estimate(spec, graph.data_info, batch)
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
        infos = _net_infos(registry.entries()) if kind == "nets" else {}
        for entry in registry.entries():
            extra = _net_details(infos[entry.name]) if kind == "nets" else ""
            print(f"  {entry.name.ljust(width)}  {entry.description}{extra}")
    return 0


def _net_infos(entries: list) -> dict:
    from .netinfo import net_infos  # counts cached per source file: no 80 torchvision builds per call

    return net_infos(entries)


def _net_details(info: dict) -> str:
    if "error" in info:
        return f"  [cannot build with defaults: {info['error']}]"
    return f"  [{info['params']:,} params; ports {_compact_ports(info['ports'])}]"


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
    with ExitStack() as stack:
        return _run(args, stack)


def _resume_gate(run_dir: Path, choice: Any) -> Any:
    """Before anything of a run is imported: its graph (read as data) is the one it started with; then the
    admission of its recorded plugins (kdgraph/plugin_trust.py)."""
    from .errors import CheckpointError
    from .files import RUN_FILE, read_json
    from .plugin_trust import Admission, run_records
    from .run_guard import check_spec_unchanged, read_run_info
    from .spec import dump_resolved, load_spec

    source, saved = read_run_info(run_dir)
    identity = load_spec(source, saved, check_registry=False, import_plugins=False)
    started = read_json(run_dir / "run.json", RUN_FILE, within=run_dir).get("hash")
    if started is not None and started != identity.hash():
        raise CheckpointError(
            f"{run_dir} was started from a different graph (hash {started} != {identity.hash()}: {source} or its "
            "overrides changed since); resume with the same graph and overrides"
        )
    check_spec_unchanged(run_dir, dump_resolved(identity), identity.hash())
    return Admission(str(run_dir), run_records(run_dir, identity.doc.get("plugins"), identity.base_dir), choice)


def _run(args: argparse.Namespace, stack: ExitStack) -> int:
    from .catalog import admitted
    from .check import check_graph
    from .console import Console
    from .initcheck import check_inits
    from .plugin_trust import choice_of, refuse_for_graph_file
    from .run_guard import read_run_info
    from .train import Trainer, new_run_dir

    files, overrides = _graph_args(args)
    if args.resume:
        if files or overrides or args.preset:
            raise SpecError(
                "--resume RUN_DIR takes no graph file, overrides or preset: they are read from the run, so that it "
                "continues exactly (a larger train.epochs would re-lay the lr schedule over epochs already trained "
                "and match neither run); to train longer, start a new run with the new train.epochs"
            )
        run_dir = Path(args.resume)
        gate = _resume_gate(run_dir, choice_of(args))  # the run's identity checked before any of its code runs
        stack.enter_context(admitted(gate))  # its plugins only as named again now (or trusted)
        source, saved = read_run_info(run_dir)
        checked = check_graph(source, saved)  # built once and dry-run once, as a fresh run
        spec = checked.spec
        trainer = Trainer(checked, run_dir, log=Console(quiet=args.quiet), resume=True, stop_after=args.stop_after)
        created = False
    else:
        refuse_for_graph_file(choice_of(args))
        if len(files) != 1:
            raise SpecError("run takes one graph file (and key=value overrides)")
        checked = check_graph(files[0], overrides)  # every problem before any directory is made
        spec = checked.spec
        check_inits(spec, checked.graph)
        created = not (args.out and Path(args.out).exists())
        run_dir = new_run_dir(spec, args.out, args.force)
        trainer = Trainer(checked, run_dir, log=Console(quiet=args.quiet), stop_after=args.stop_after)
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


OVERRIDES_HELP = """\
overrides (after the graph file, any number; values are YAML):
  key=value     set a key that exists (or has a default)     train.epochs=2  nodes.student.net=vgg8
  +key=value    add a key that does not exist yet            +nodes.student.dropout=0.1
  ++key=value   add or replace                               ++train.precision=bf16
  ~key          remove a key                                 ~train.lr_schedule.milestones
  lists and mappings in YAML flow style, quoted for the shell: 'train.lr_schedule.milestones=[3, 6]'
  a typo in a key is an error with a did-you-mean, never a new key

example:
  kdgraph run graphs/kd.yaml --preset digits train.epochs=3 'nodes.teacher.init={from: teachers/resnet32x4.yaml}'
"""

GRAPH_ITEMS = "graph file (.yaml), then overrides: key=value, +key=value, ++key=value, ~key (see below)"
PRESET_HELP = (
    "apply a preset first (graphs/presets/NAME.yaml or a .yaml path), e.g. digits: the graph's topology "
    "on the bundled digits with small nets in the same roles; the overrides after it win"
)


def _lazy(module: str, function: str) -> Any:
    """A command handler imported only when the command runs (`--help` imports neither torch nor accelerate)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(f"kdgraph.{module}"), function)(args)

    return handler


def _command(sub: Any, name: str, help_text: str, **kw: Any) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter, **kw,
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="kdgraph",
        description="Declarative graph-of-networks knowledge distillation: a method is a YAML graph of networks, "
        "operations and losses; kdgraph validates, plans, trains, draws and exports it.",
        epilog="first run: kdgraph run graphs/quickstart.yaml   (KD on the bundled digits, about a minute on a CPU)\n"
        "any method small: kdgraph run graphs/slkd.yaml --preset digits\n"
        "help on a command: kdgraph COMMAND --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"kdgraph {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(sub, "run", "train a graph file (or resume a run)", epilog=OVERRIDES_HELP)
    run.add_argument("items", nargs="*", metavar="GRAPH|key=value", help=GRAPH_ITEMS)
    run.add_argument("--preset", metavar="NAME", help=PRESET_HELP)
    run.add_argument("--out", metavar="DIR", help="run directory (default runs/<name>/<time>)")
    run.add_argument("--force", action="store_true", help="empty a non-empty --out run directory first")
    run.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue an interrupted or paused run exactly where it stopped (same weights, optimizer, data order, "
        "RNG); takes no graph file, overrides or preset: they are read from RUN_DIR/run.json",
    )
    run.add_argument(
        "--stop-after", type=count(1), metavar="STEPS",
        help="pause after STEPS optimizer steps in total (all stages), writing a checkpoint; exit 0; "
        "continue with --resume",
    )
    run.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar or per-epoch lines; errors and the result only"
    )
    plugin_options(run, "the --resume run")
    run.set_defaults(func=cmd_run)

    val = _command(sub, "validate", "schema, meaning checks and a shape-checking dry run (an empty batch; 2 "
                   "images where values matter)",
                   epilog=OVERRIDES_HELP)
    val.add_argument("items", nargs="+", metavar="GRAPH|key=value", help="one or more graph files, then overrides "
                     "applied to each: key=value, +key=value, ++key=value, ~key (see below)")
    val.add_argument("--preset", metavar="NAME", help=PRESET_HELP)
    val.add_argument("--resolved", action="store_true", help="print the resolved graph (vars, overrides, extends)")
    val.add_argument("--no-dry-run", action="store_true", help="skip the shape-checking dry run")
    val.set_defaults(func=cmd_validate)

    pl = _command(sub, "plan", "show the execution plan of each stage (order, no_grad, parameters, frees, memory)",
                  epilog=OVERRIDES_HELP)
    pl.add_argument("items", nargs="+", metavar="GRAPH|key=value", help=GRAPH_ITEMS)
    pl.add_argument("--preset", metavar="NAME", help=PRESET_HELP)
    pl.add_argument("--batch", type=count(1), help="batch size of the memory estimate (default: data.batch_size)")
    pl.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the memory estimate (a step on fake tensors)"
    )
    pl.set_defaults(func=cmd_plan)
    for sp in (run, val, pl):
        sp.add_argument("--pair", metavar="NAME", help="a teacher-student pair from the graph file's `pairs:` table")

    ls = _command(sub, "list", "list the registered nets, ops, losses and datasets, or a graph's pairs")
    ls.add_argument("kind", nargs="?", choices=["nets", "ops", "losses", "datasets", "pairs"],
                    help="one registry only (default: all), or pairs: the `pairs:` table of GRAPH")
    ls.add_argument("graph", nargs="?", help="with pairs: the graph file whose `pairs:` table to show")
    ls.add_argument("--markdown", action="store_true", help="the reference documentation as Markdown")
    ls.add_argument("-o", "--output", metavar="FILE", help="with --markdown: write to FILE instead of printing")
    ls.set_defaults(func=cmd_list)

    dr = _command(sub, "draw", "draw a graph file or a run as a diagram (SVG, PNG, PDF, DOT, Mermaid)",
                  epilog=OVERRIDES_HELP)
    dr.add_argument("items", nargs="+", metavar="GRAPH|RUN_DIR|key=value",
                    help="a graph file (then overrides) or a run directory (drawn with its final losses and "
                    "accuracies)")
    dr.add_argument("-o", "--output", metavar="FILE", help="output file; the format follows the suffix: .svg .png .pdf "
                    "(Graphviz), .dot, .mmd (Mermaid, no dependency)")
    dr.add_argument("--format", choices=["dot", "mmd"], help="print the DOT or Mermaid source instead of a file")
    dr.add_argument("--stage", metavar="NAME", help="draw one stage only")
    dr.add_argument("--direction", choices=["LR", "TB", "RL", "BT"], default="LR", help="layout direction (default LR)")
    dr.add_argument("--no-legend", action="store_true", help="leave the legend out")
    dr.add_argument("--preset", metavar="NAME", help=PRESET_HELP)
    plugin_options(dr, "the run directory")
    dr.set_defaults(func=_lazy("draw", "cmd_draw"))

    pt = _command(sub, "plot", "plot loss, lr and top-1 curves of one or more runs (needs matplotlib)")
    pt.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; several are overlaid")
    pt.add_argument("-o", "--output", required=True, metavar="FILE", help="image file: .png, .svg or .pdf")
    pt.add_argument("--x", choices=["step", "epoch"], default="step", help="x axis (default: optimizer steps)")
    pt.add_argument("--label", action="append", help="legend name of each run, in order (repeat per run)")
    pt.add_argument("--logy", action="store_true", help="log scale for the loss panels")
    pt.set_defaults(func=_lazy("plot", "cmd_plot"))

    ex = _command(sub, "export", "export the deployed slice of a finished run as one standalone module")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (with final.pt)")
    ex.add_argument("-o", "--output", metavar="OUT.pt", help="output file (default RUN_DIR/model.pt)")
    ex.add_argument("--port", help="export this port instead of the graph's deploy port")
    ex.add_argument("--no-torchscript", action="store_true", help="do not write the traced OUT.ts")
    ex.add_argument("--check", action="store_true", help="evaluate the export on the run's test split and compare")
    plugin_options(ex, "the run")
    ex.set_defaults(func=_lazy("export", "cmd_export"))

    ev = _command(sub, "eval", "top-1 and top-5 of a run's deployed model (or an exported model.pt) on a test split")
    ev.add_argument("target", metavar="RUN_DIR|model.pt", help="a finished run directory or a kdgraph export")
    ev.add_argument("--data", metavar="NAME", help="dataset to score on: digits, cifar10, cifar100, synthetic "
                    "(default: the run's own data; required for a model.pt)")
    ev.add_argument("--root", metavar="DIR", help="where the dataset lives (as data.root; default $KDGRAPH_DATA, "
                    "else ./data)")
    ev.add_argument("--batch-size", type=count(1), default=256, help="images per forward pass (default 256)")
    plugin_options(ev, "the run or model.pt")
    ev.set_defaults(func=_lazy("evaluate", "cmd_eval"))

    ca = _command(sub, "cache", "list or clear kdgraph's cache of trained dependency graphs (teachers)",
                  epilog="the cache is $KDGRAPH_CACHE, else $XDG_CACHE_HOME/kdgraph, else ~/.cache/kdgraph; "
                  "clear removes only what kdgraph wrote there")
    ca.add_argument("action", choices=["list", "clear"], help="list: entries with sizes; clear: remove them")
    ca.set_defaults(func=_lazy("cache", "cmd_cache"))

    sweep.register_cli(sub)
    report.register_cli(sub)
    _register_profile(sub)

    return p


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import cmd_profile as profile

    return profile(args)


def _register_profile(sub: Any) -> None:
    """``kdgraph profile GRAPH`` (declared here: the profile module imports torch)."""
    p = sub.add_parser("profile", help="time per node, loss, backward and optimizer; memory; images/s")
    p.add_argument("items", nargs="+", metavar="GRAPH|key=value", help="graph file and overrides")
    p.add_argument("--steps", type=count(1), default=10, help="timed steps of each kind (default 10)")
    p.add_argument("--warmup", type=count(0), default=3, help="untimed steps first (default 3)")
    p.add_argument("--stage", help="the stage to profile (default: the last)")
    p.add_argument("--format", choices=["text", "markdown"], default="text", help="table format (default text)")
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
