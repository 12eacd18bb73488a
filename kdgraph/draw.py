"""Diagrams of graph files and runs: the planned graph as Graphviz DOT (SVG/PNG/PDF via `dot`) or Mermaid.

    kdgraph draw graphs/slkd.yaml -o slkd.svg          # .svg .png .pdf need Graphviz's `dot`
    kdgraph draw graphs/slkd.yaml -o slkd.mmd          # .mmd (Mermaid) and .dot need nothing
    kdgraph draw runs/slkd/20260101-120000 -o run.svg  # adds final losses and top-1 of a run

Drawing never trains, loads data or reads a checkpoint: the plan is made from the graph built on
PyTorch's ``meta`` device (shapes and parameter counts, no memory, no weights). Both outputs come
from one backend-neutral ``Diagram``, so DOT and Mermaid always show the same nodes and arrows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import KDGraphError, SpecError
from .plugin_trust import NO_PLUGINS, PluginChoice

if TYPE_CHECKING:  # the CLI imports this module on every start: the engine is imported when drawing
    from .plan import NodeFacts, Plan, StagePlan
    from .spec import GraphSpec

RENDERED = (".svg", ".png", ".pdf")  # through Graphviz's dot
SOURCES = (".dot", ".gv", ".mmd", ".mermaid")  # written as text
INSTALL_HINT = "apt-get install graphviz / brew install graphviz"

# colour-blind-friendly (ColorBrewer Dark2), each meaning also carried by a line style or width
GRAD = "#d95f02"  # data flow that carries gradient back
LOSS = "#7570b3"  # loss edges
DEPLOY = "#1b9e77"  # the deployed path
REF = "#999999"  # weights shared with another node (`call`)
FILL = {"trainable": "#fff2cc", "frozen": "#e6e6e6", "fit": "#e5f5e0", "plain": "#ffffff", "data": "#deebf7"}
BORDER = {"trainable": "#b58900", "frozen": "#7f7f7f", "fit": "#41ab5d", "plain": "#555555", "data": "#4a7bb7"}


class DrawError(KDGraphError):
    """A diagram cannot be written (missing Graphviz, unknown format or stage, bad run directory)."""


# ----------------------------------------------------------------------------- the diagram model


@dataclass
class DNode:
    """A box of the diagram: a network, an op, the data source, the deploy terminal or a legend sample."""

    id: str
    shape: str  # "net", "op", "data" or "deploy"
    lines: list[str]  # the first is the title
    state: str = "plain"  # "trainable", "frozen", "fit", "plain" or "data"
    deploy: bool = False  # on the deployed path
    group: str | None = None
    name: str | None = None  # the graph node it shows


@dataclass
class DEdge:
    """An arrow: data flow, a loss, a learned loss parameter, a shared module, or the deploy output."""

    src: str
    dst: str
    kind: str  # "flow", "loss", "param", "ref", "deploy" or "order" (invisible: stage i before stage i + 1)
    label: str = ""
    grad: bool = False  # gradient flows back along it (flow, param) / into the learner (loss)
    both: bool = False  # loss only: gradient also flows into the source (detach: false)
    deploy: bool = False
    name: str | None = None  # the loss edge's name


@dataclass
class DGroup:
    id: str
    title: str


@dataclass
class Diagram:
    """Everything both back ends draw, in drawing order."""

    title: str
    subtitle: str = ""
    direction: str = "LR"
    nodes: list[DNode] = field(default_factory=list)
    edges: list[DEdge] = field(default_factory=list)
    groups: list[DGroup] = field(default_factory=list)

    def node(self, id: str) -> DNode:
        return next(n for n in self.nodes if n.id == id)


# ----------------------------------------------------------------------------- results of a run


@dataclass
class RunResults:
    """Final loss of each edge and top-1 of each evaluated port, per stage, read from metrics.jsonl."""

    losses: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> edge -> value
    top1: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> port -> %


def run_results(records: list[dict[str, Any]]) -> RunResults:
    """The last `train` record's losses and the last `eval` record's top-1, for each stage."""
    out = RunResults()
    for r in records:
        stage = r.get("stage", "main")
        if r.get("kind") == "train" and isinstance(r.get("losses"), dict):
            out.losses[stage] = dict(r["losses"])
        elif r.get("kind") == "eval" and isinstance(r.get("top1"), dict):
            out.top1[stage] = dict(r["top1"])
    return out


def is_run_dir(path: Path) -> bool:
    run_json = path / "run.json"
    return path.is_dir() and (run_json.exists() or run_json.is_symlink())


def load_run(run_dir: Path, plugins: PluginChoice = NO_PLUGINS) -> tuple[GraphSpec, RunResults]:
    """The spec a run trained (its resolved spec.yaml, paths relative to its source) and its results.

    The plugins the run records are imported only as `plugins` allows (named again, or trusted).
    """
    from .catalog import admitted
    from .plugin_trust import Admission, run_records
    from .run_files import read_metrics, read_run_info, read_run_spec

    info = read_run_info(run_dir)  # every file typed and bounded, and read before any work: a bad one is a RunError
    saved = read_run_spec(run_dir)
    metrics = run_dir / "metrics.jsonl"
    rows = read_metrics(metrics, within=run_dir) if metrics.exists() or metrics.is_symlink() else None
    base = Path(info.source).parent if info.source else run_dir
    if saved is not None:
        # the resolved spec is what ran, even if the graph file changed since
        recorded = run_records(run_dir, saved.doc.get("plugins") if isinstance(saved.doc, dict) else None, base)
        with admitted(Admission(str(run_dir), recorded, plugins)):  # no code of the run's own choosing
            spec = load_for_drawing(info.source or saved.path, [], document=saved.doc)
    elif info.source:
        with admitted(Admission(str(run_dir), run_records(run_dir, None, base), plugins)):
            spec = load_for_drawing(info.source, info.overrides)
    else:
        raise DrawError(f"{run_dir}: no spec.yaml and no source in run.json")
    return spec, run_results(rows) if rows is not None else RunResults()


# ----------------------------------------------------------------------------- spec and plan, nothing run


def _missing_init_file(problem) -> bool:
    """A not-yet-available checkpoint or teacher graph: irrelevant to a drawing."""
    return problem.kind == "missing_file"


def load_for_drawing(path: str | Path, overrides: list[str], document: dict | None = None) -> GraphSpec:
    """load_spec, except that a missing `init` checkpoint or graph file is no problem for a drawing."""
    from .spec import load_spec, registry_problems

    spec = load_spec(path, overrides, document=document, check_registry=False)
    problems = [p for p in registry_problems(spec) if not _missing_init_file(p)]
    if problems:
        raise SpecError(problems)
    return spec


def _without_pretrained(spec: GraphSpec) -> GraphSpec:
    """The spec with `weights:` of nets dropped: pretrained weights change no port and no parameter count."""
    from .registry import NETS

    nodes = {}
    for name, node in spec.nodes.items():
        if node.kind == "net" and node.params.get("weights") and "weights" in NETS.get(node.type).parameters():
            node = replace(node, params={k: v for k, v in node.params.items() if k != "weights"})
        nodes[name] = node
    return replace(spec, nodes=nodes)


def plan_for_drawing(spec: GraphSpec) -> tuple[Plan, dict[str, NodeFacts], dict[str, dict[str, str]]]:
    """The plan, node facts and `call`-style node references of `spec`, built on the meta device.

    Meta tensors carry shapes but no storage, so even a ResNet-50 graph plans in well under a
    second and nothing is initialised, downloaded or loaded. An op that cannot be built on meta
    is retried once on the CPU.
    """

    from .data import data_info
    from .graph import DistillGraph
    from .meta import weightless

    spec = _without_pretrained(spec)
    info = data_info(spec.data, spec.base_dir)
    try:
        with weightless():  # meta device, initialisers skipped (they would import torch._dynamo)
            graph = DistillGraph(spec, info)
    except Exception:  # e.g. an op that reads a value in __init__: retry for real, raising the real error
        graph = DistillGraph(spec, info)
    refs = {}
    for name, module in graph.nodes.items():
        keys = getattr(module, "node_refs", ())
        refs[name] = {k: str(spec.nodes[name].params[k]) for k in keys if k in spec.nodes[name].params}
    return graph.plan, graph.facts, refs


# ----------------------------------------------------------------------------- labels


def fmt_number(x: Any) -> str:
    """0.9 -> '0.9', 4.0 -> '4', 0.4000000001 -> '0.4', 5e-4 -> '0.0005'."""
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def fmt_schedule(value: Any) -> str:
    """A number or a schedule, compactly: '8 warmup 20', '0.9 until 60', 'cos 0→-1 /10ep'."""
    if isinstance(value, dict):
        for curve, short in (("cosine", "cos"), ("linear", "lin")):
            if curve in value:
                a, b = value[curve]
                return f"{short} {fmt_number(a)}→{fmt_number(b)} /{value.get('epochs')}ep"
        if "value" in value:
            parts = [fmt_number(value["value"])]
            parts += [f"{k} {value[k]}" for k in ("warmup", "until", "from") if k in value]
            return " ".join(parts)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_schedule(v) for v in value) + "]"
    return fmt_number(value)


def fmt_count(n: int) -> str:
    """Parameter counts: 6274 -> '6.27k', 7433860 -> '7.43M'."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1e3:.3g}k"
    return f"{n / 1e6:.3g}M"


def _short(text: str, limit: int = 48) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def loss_label(edge, value: float | None = None) -> str:
    """'kd T=4 ×0.9' (and '= 0.255' with a run's final value); a custom edge name leads."""
    from .spec import default_edge_name

    params = " ".join(f"{k}={fmt_schedule(v)}" for k, v in edge.params.items())
    text = " ".join(t for t in (edge.loss, params) if t)
    default = default_edge_name(edge.loss, edge.target, edge.pred)
    if edge.name not in (default, f"{default}#{edge.index}"):
        text = f"{edge.name}: {text}"
    tail = f" ×{fmt_schedule(edge.weight)}" + ("" if edge.detach else " (no detach)")
    text = _short(text, 60 - len(tail)) + tail  # a long parameter list is shortened, the weight always shows
    if value is not None:
        text += f"\nfinal {value:.4g}"
    return text


def _init_text(init: dict | None, prefix: str = "init") -> str | None:
    if not init:
        return None
    if "from" in init:
        return f"{prefix}: {Path(str(init['from'])).name}"
    if "checkpoint" in init:
        return f"{prefix}: {Path(str(init['checkpoint'])).name}"
    if "stage" in init:
        return f"{prefix}: end of stage {init['stage']}"
    if "snapshot" in init:
        return f"{prefix}: start of stage {init['snapshot']}"
    return None


def _op_params(node) -> list[str]:
    """An op's type and its parameters from the file, one per line."""
    return [node.type] + [_short(f"{k}={fmt_schedule(v)}", 40) for k, v in node.params.items()]


# ----------------------------------------------------------------------------- building


def _stage_nodes(spec: GraphSpec, stage: StagePlan, refs: dict[str, dict[str, str]]) -> list[str]:
    """Nodes a stage computes, evaluates or fits, plus nodes whose modules they call, in graph order."""
    used = set(stage.order) | {s.name for s in stage.eval_program if s.kind == "node"}
    used |= {s.name for s in stage.fit_program if s.kind == "node"} | set(stage.fit)
    used |= {r for n in list(used) for r in refs.get(n, {}).values() if r in spec.nodes}
    return [n for n in spec.nodes if n in used]


def build_diagram(
    spec: GraphSpec,
    plan: Plan,
    facts: dict[str, NodeFacts],
    refs: dict[str, dict[str, str]] | None = None,
    *,
    stage: str | None = None,
    results: RunResults | None = None,
    legend: bool = True,
    direction: str = "LR",
) -> Diagram:
    """The diagram of a planned graph: one cluster per stage (or only `stage`), a legend, the deploy path."""
    from .spec.dataflow import node_of, port_of

    refs = refs or {}
    stages = plan.stages
    if stage is not None:
        names = [s.name for s in stages]
        if stage not in names:
            from .errors import did_you_mean

            raise DrawError(
                f"no stage {stage!r} in {spec.name} ({did_you_mean(stage, names) or 'stages: ' + ', '.join(names)})"
            )
        stages = [plan.stage(stage)]
    clustered = bool(spec.doc.get("stages")) and stage is None  # one cluster per stage
    title = spec.title or spec.name
    if stage is not None and spec.doc.get("stages"):
        title += f" (stage {stage})"
    d = Diagram(title=title, subtitle=spec.cite, direction=direction)

    staged = bool(spec.doc.get("stages"))
    drawn = {s.name: (_stage_nodes(spec, s, refs) if staged else list(spec.nodes)) for s in stages}
    target = node_of(spec.deploy) if spec.deploy else None
    deploy_stage = next((s for s in reversed(stages) if target in drawn[s.name]), None)
    last: str | None = None  # the previous stage's last node: its cluster is laid out before this one
    for s in stages:
        prefix = f"s{s.index}_" if clustered else "n_"
        group = f"stage_{s.index}" if clustered else None
        if group:
            epochs = spec.stages[s.index].epochs
            d.groups.append(DGroup(group, f"stage {s.name} · {epochs} epoch{'s' if epochs != 1 else ''}"))
        deploy = set(plan.deploy_nodes) if s is deploy_stage else set()
        deploy |= {r for n in deploy for r in refs.get(n, {}).values()}
        first = len(d.nodes)
        _add_stage(d, spec, s, facts, refs, drawn[s.name], prefix, group, deploy, results)
        if clustered and last is not None and len(d.nodes) > first:
            d.edges.append(DEdge(last, d.nodes[first].id, "order"))
        if clustered and len(d.nodes) > first:
            last = d.nodes[-1].id
        if s is deploy_stage:
            d.nodes.append(DNode("deploy", "deploy", ["deploy", spec.deploy], "plain", True))
            d.edges.append(DEdge(prefix + target, "deploy", "deploy", port_of(spec.deploy), deploy=True))
    if legend:
        _add_legend(d)
    return d


def _add_stage(
    d: Diagram,
    spec: GraphSpec,
    stage: StagePlan,
    facts: dict[str, NodeFacts],
    refs: dict[str, dict[str, str]],
    names: list[str],
    prefix: str,
    group: str | None,
    deploy: set[str],
    results: RunResults | None,
) -> None:
    from .spec.dataflow import DATA, node_of, port_of

    stage_spec = spec.stages[stage.index]
    # outputs that require gradient this stage (a parameter-free `detach`-like op's output does not)
    grad_nodes = {
        n for n in stage.order if n not in stage.no_grad and not (facts[n].stops_gradient and not facts[n].params)
    }
    losses = (results.losses.get(stage.name, {}) if results else {}) or {}
    top1 = (results.top1.get(stage.name, {}) if results else {}) or {}

    def nid(name: str) -> str:
        return prefix + name

    from .views import describe, view_names

    views = [f"{v}: {describe(spec.data['views'][v])}" for v in view_names(spec.data)]  # arrows name the view
    d.nodes.append(
        DNode(nid(DATA), "data", ["data", str(spec.data.get("dataset", "")), *views], "data", group=group, name=DATA)
    )
    for name in names:
        node = spec.nodes[name]
        if name in stage.trainable:
            state = "trainable"
        elif name in stage.fit:
            state = "fit"
        elif facts[name].params:
            state = "frozen"
        else:
            state = "plain"
        params = fmt_count(facts[name].params) if facts[name].params else ""
        if node.kind == "net":
            lines = [node.label or name, f"{node.type} · {params}"]
        else:
            lines = [node.label or name, *_op_params(node)]
            lines[1] += f" · {params}" if params else ""
        status = {"trainable": "trains", "frozen": "frozen", "fit": "fitted from data"}.get(state)
        if state == "frozen" and not (node.frozen or name in stage_spec.frozen):
            status = "not trained in this stage"
        if status:
            lines.append(status)
        if facts[name].stops_gradient:
            lines.append("stops gradient")
        for text in (_init_text(node.init), _init_text(stage_spec.init.get(name), "stage init")):
            if text:
                lines.append(text)
        for port, acc in top1.items():
            if node_of(port) == name:
                lines.append(f"top-1 {acc:.2f}%" + ("" if port_of(port) == "logits" else f" ({port_of(port)})"))
        d.nodes.append(DNode(nid(name), node.kind, lines, state, name in deploy, group, name))

    shown = set(names)
    for name in names:
        node = spec.nodes[name]
        for port in node.inputs:
            src = node_of(port)
            if src != DATA and src not in shown:
                continue
            grad = src in grad_nodes and name in grad_nodes and not facts[name].stops_gradient
            default_input = src == DATA and port == "data.image" and node.kind == "net"
            on_deploy = name in deploy and (src in deploy or src == DATA)
            d.edges.append(
                DEdge(nid(src), nid(name), "flow", "" if default_input else port_of(port), grad, deploy=on_deploy)
            )
        for key, owner in refs.get(name, {}).items():
            if owner in shown:
                module = spec.nodes[name].params.get("module") or ""
                label = f"{key}: {owner}.{module}" if module else f"{key}: {owner}"
                d.edges.append(DEdge(nid(owner), nid(name), "ref", label, deploy=name in deploy))
    for edge_name in stage.edges:
        e = spec.edge(edge_name)
        src, dst = node_of(e.target), node_of(e.pred)
        d.edges.append(
            DEdge(
                nid(src),
                nid(dst),
                "loss",
                loss_label(e, losses.get(e.name)),
                grad=dst in grad_nodes,
                both=not e.detach and src in grad_nodes,
                name=e.name,
            )
        )
        extra = dict(e.port_params)
        if e.sample_weight:
            extra["sample_weight"] = e.sample_weight
        for key, port in extra.items():
            owner = node_of(port)
            grad = key != "sample_weight" and owner in grad_nodes
            d.edges.append(DEdge(nid(owner), nid(dst), "param", f"{key} of {e.loss}", grad, name=e.name))


def _add_legend(d: Diagram) -> None:
    """Sample nodes and arrows for the styles this diagram uses (the basics always)."""
    g = "legend"
    shapes = {n.shape for n in d.nodes}
    states = {n.state for n in d.nodes}
    kinds = {e.kind for e in d.edges}
    has_grad = any(e.grad for e in d.edges if e.kind == "flow")
    has_both = any(e.both for e in d.edges)
    has_op = "op" in shapes or kinds & {"param", "ref"} or has_both
    nodes = [
        DNode("lg_data", "data", ["data source"], "data", group=g),
        DNode("lg_train", "net", ["network", "trains"], "trainable", group=g),
        DNode("lg_frozen", "net", ["network", "frozen"], "frozen", group=g),
    ]
    edges = [
        DEdge("lg_data", "lg_train", "flow", "data flow"),
        DEdge("lg_frozen", "lg_train", "loss", "loss ×weight: gradient into the learner", grad=True),
    ]
    if has_op:
        nodes.append(DNode("lg_op", "op", ["op"], "plain", group=g))
        if has_grad:
            edges.append(DEdge("lg_train", "lg_op", "flow", "carries gradient back", grad=True))
        if has_both:
            edges.append(DEdge("lg_op", "lg_train", "loss", "loss, detach: false: gradient into both", True, True))
        if "param" in kinds:
            grad = any(e.grad for e in d.edges if e.kind == "param")
            edges.append(DEdge("lg_op", "lg_train", "param", "loss parameter read from a port", grad=grad))
        if "ref" in kinds:
            edges.append(DEdge("lg_frozen", "lg_op", "ref", "module shared (call)"))
    if "fit" in states:
        nodes.append(DNode("lg_fit", "op", ["op", "fitted from data"], "fit", group=g))
    if "deploy" in shapes:
        nodes.append(DNode("lg_deploy", "deploy", ["deployed port"], "plain", True, group=g))
        edges.append(DEdge("lg_op" if has_op else "lg_train", "lg_deploy", "deploy", "deploy path", deploy=True))
    d.groups.append(DGroup(g, "legend"))
    d.nodes += nodes
    d.edges += edges


# ----------------------------------------------------------------------------- Graphviz DOT


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dot_attrs(attrs: dict[str, Any]) -> str:
    parts = []
    for k, v in attrs.items():
        value = v if isinstance(v, str) and v.startswith("<") and v.endswith(">") else _dot_str(str(v))
        parts.append(f"{k}={value}")
    return "[" + ", ".join(parts) + "]"


DOT_SHAPES = {"net": "box", "op": "hexagon", "data": "cylinder", "deploy": "cds"}


def _dot_node(n: DNode) -> str:
    title, rest = n.lines[0], n.lines[1:]
    label = f"<<b>{_html(title)}</b>" + "".join(f'<br/><font point-size="9">{_html(t)}</font>' for t in rest) + ">"
    style = ["filled"]
    if n.shape == "net":
        style.append("rounded")
    if n.state == "frozen":
        style.append("dashed")
    attrs: dict[str, Any] = {
        "shape": DOT_SHAPES[n.shape],
        "label": label,
        "style": ",".join(style),
        "fillcolor": FILL[n.state],
        "color": BORDER[n.state],
    }
    if n.state == "trainable":
        attrs["penwidth"] = 1.6
    if n.deploy:
        attrs.update(color=DEPLOY, penwidth=3)
    return f"  {_dot_str(n.id)} {_dot_attrs(attrs)};"


def _dot_edge(e: DEdge) -> str:
    if e.kind == "order":  # ranks the next stage's cluster after this one's, in either direction
        return f"  {_dot_str(e.src)} -> {_dot_str(e.dst)} [style=invis, weight=10];"
    attrs: dict[str, Any] = {}
    if e.label:
        attrs["label"] = e.label
    if e.kind == "loss":
        attrs.update(style="dashed", color=LOSS, fontcolor=LOSS, arrowhead="normal" if e.grad else "onormal")
        if e.both:
            attrs.update(dir="both", arrowtail="normal")
    elif e.kind == "param":
        attrs.update(style="dotted", color=GRAD if e.grad else LOSS, fontcolor=LOSS)
    elif e.kind == "ref":
        attrs.update(style="dotted", color=REF, fontcolor=REF, arrowhead="odiamond")
    else:  # flow and deploy
        attrs["color"] = GRAD if e.grad else (DEPLOY if e.deploy else "#333333")
        if e.grad:
            attrs["penwidth"] = 2
    if e.deploy:
        attrs["penwidth"] = 3
    return f"  {_dot_str(e.src)} -> {_dot_str(e.dst)} {_dot_attrs(attrs)};"


def to_dot(d: Diagram) -> str:
    """Graphviz source: stages as clusters, the legend as its own cluster."""
    title = (
        f"<<b>{_html(d.title)}</b>"
        + (f'<br/><font point-size="10">{_html(d.subtitle)}</font>' if d.subtitle else "")
        + ">"
    )
    attrs = {"rankdir": d.direction, "label": title, "labelloc": "t", "fontname": "Helvetica", "newrank": "true"}
    out = [
        "digraph kdgraph {",
        f"  graph {_dot_attrs({**attrs, 'nodesep': 0.35, 'ranksep': 0.6})};",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for n in d.nodes:
        if n.group is None:
            out.append(_dot_node(n))
    # the legend cluster last, after the graph it explains
    groups = sorted(d.groups, key=lambda g: g.id == "legend")
    for g in groups:
        out.append(f"  subgraph {_dot_str('cluster_' + g.id)} {{")
        style = {"label": g.title, "style": "rounded", "color": "#aaaaaa", "fontname": "Helvetica"}
        if g.id == "legend":
            style.update(style="rounded,dashed", fontsize=10)
        out.append(f"    graph {_dot_attrs(style)};")
        out += ["  " + _dot_node(n) for n in d.nodes if n.group == g.id]
        out.append("  }")
    legend = {n.id for n in d.nodes if n.group == "legend"}
    out += [_dot_edge(e) for e in d.edges if e.src not in legend]
    out += [_dot_edge(e) for e in d.edges if e.src in legend]
    out.append("}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- Mermaid


def _mmd_text(text: str) -> str:
    """Text inside a quoted Mermaid label: entity codes for the characters its grammar reserves."""
    for ch, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("|", "#124;")):
        text = text.replace(ch, code)
    return text


MMD_SHAPES = {"net": ('("', '")'), "op": ('{{"', '"}}'), "data": ('[("', '")]'), "deploy": ('>"', '"]')}


def _mmd_node(n: DNode) -> str:
    title, rest = n.lines[0], n.lines[1:]
    label = f"<b>{_mmd_text(title)}</b>" + "".join(f"<br/><small>{_mmd_text(t)}</small>" for t in rest)
    open_, close = MMD_SHAPES[n.shape]
    return f"{n.id}{open_}{label}{close}"


def _mmd_arrow(e: DEdge) -> str:
    if e.kind == "loss":
        return "<-.->" if e.both else "-.->"
    if e.kind in ("param", "ref"):
        return "-.->"
    return "==>" if e.deploy else "-->"


def _mmd_link_style(e: DEdge) -> str | None:
    if e.kind == "loss":
        return f"stroke:{LOSS},color:{LOSS}"
    if e.kind == "ref":
        return f"stroke:{REF},color:{REF}"
    if e.kind == "param":
        return f"stroke:{GRAD if e.grad else LOSS},color:{LOSS}"
    if e.grad:
        return f"stroke:{GRAD},stroke-width:{4 if e.deploy else 2}px"
    if e.deploy:
        return f"stroke:{DEPLOY},stroke-width:4px"
    return None


def to_mermaid(d: Diagram) -> str:
    """Mermaid flowchart (GitHub renders it in Markdown): stages as subgraphs, styles as classes."""
    # the front matter is YAML: a JSON string is a safe YAML scalar whatever the title holds
    out = ["---", f"title: {json.dumps(d.title, ensure_ascii=False)}", "---", f"flowchart {d.direction}"]
    for n in d.nodes:
        if n.group is None:
            out.append("  " + _mmd_node(n))

    def group(g: DGroup) -> None:
        out.append(f'  subgraph {g.id}["{_mmd_text(g.title)}"]')
        # a subgraph linked to nothing outside lays out on its own: keep the graph's direction
        out.append(f"    direction {'LR' if g.id == 'legend' else d.direction}")
        out.extend("    " + _mmd_node(n) for n in d.nodes if n.group == g.id)
        out.append("  end")

    for g in d.groups:
        if g.id != "legend":
            group(g)
    # links are numbered in the order they appear (linkStyle refers to them): the legend's come last
    legend_nodes = {n.id for n in d.nodes if n.group == "legend"}
    edges = [e for e in d.edges if e.src not in legend_nodes] + [e for e in d.edges if e.src in legend_nodes]
    styles: dict[str, list[int]] = {}
    link = 0
    for i, e in enumerate(edges):
        if e.src in legend_nodes and (i == 0 or edges[i - 1].src not in legend_nodes):
            group(next(g for g in d.groups if g.id == "legend"))
            # an invisible link ranks the legend after the graph, where dagre cannot overlap them
            main = [n.id for n in d.nodes if n.group != "legend"]
            anchor = "deploy" if "deploy" in main else (main[-1] if main else None)
            if anchor:
                out.append(f"  {anchor} ~~~ legend")
                link += 1
        if e.kind == "order":  # an invisible link: the next stage is laid out after this one
            out.append(f"  {e.src} ~~~ {e.dst}")
            link += 1
            continue
        label = "|" + '"' + _mmd_text(e.label).replace("\n", "<br/>") + '"' + "|" if e.label else ""
        out.append(f"  {e.src} {_mmd_arrow(e)}{label} {e.dst}")
        style = _mmd_link_style(e)
        if style:
            styles.setdefault(style, []).append(link)
        link += 1
    for state in ("trainable", "frozen", "fit", "plain", "data"):
        dash = ",stroke-dasharray:5 3" if state == "frozen" else ""
        out.append(f"  classDef {state} fill:{FILL[state]},stroke:{BORDER[state]},color:#000{dash}")
    by_state: dict[str, list[str]] = {}
    for n in d.nodes:
        by_state.setdefault(n.state, []).append(n.id)
    for state, ids in by_state.items():
        out.append(f"  class {','.join(ids)} {state}")
    for n in d.nodes:
        if n.deploy:
            out.append(f"  style {n.id} stroke:{DEPLOY},stroke-width:3px")
    for style, idx in styles.items():
        out.append(f"  linkStyle {','.join(map(str, idx))} {style}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- output


def check_output(out: Path) -> None:
    """Fail before any work when `out` names an unknown format, or a rendered one without Graphviz."""
    suffix = out.suffix.lower()
    if suffix not in RENDERED + SOURCES:
        raise DrawError(f"cannot draw to {out.name!r}: use .svg, .png, .pdf, .dot or .mmd")
    if suffix in RENDERED and shutil.which("dot") is None:
        raise DrawError(f"drawing {suffix} needs Graphviz's `dot` on PATH ({INSTALL_HINT}); .dot and .mmd need nothing")


def render(d: Diagram, out: Path) -> None:
    """Write `d` to `out` in the format its suffix names (.svg/.png/.pdf through Graphviz's dot)."""
    check_output(out)
    suffix = out.suffix.lower()
    if suffix in (".mmd", ".mermaid"):
        out.write_text(to_mermaid(d), encoding="utf-8")
    elif suffix in (".dot", ".gv"):
        out.write_text(to_dot(d), encoding="utf-8")
    else:
        cmd = [shutil.which("dot") or "dot", f"-T{suffix[1:]}", "-o", str(out)]
        proc = subprocess.run(cmd, input=to_dot(d).encode("utf-8"), capture_output=True)
        if proc.returncode != 0:
            first = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[0]
            raise DrawError(f"Graphviz dot failed on {out.name}: {first}")


def diagram_of(
    target: str | Path,
    overrides: list[str] | None = None,
    *,
    stage: str | None = None,
    legend: bool = True,
    direction: str = "LR",
    plugins: PluginChoice = NO_PLUGINS,
) -> Diagram:
    """The diagram of a graph file (with overrides) or of a run directory (with its final results)."""
    from .plugin_trust import refuse_for_graph_file

    path = Path(target)
    results = None
    if path.is_dir():
        if not is_run_dir(path):
            raise DrawError(f"{path} is not a run directory (no run.json) nor a graph file")
        if overrides:
            raise DrawError("a run directory takes no overrides: the run's own spec is drawn")
        spec, results = load_run(path, plugins)
    else:
        refuse_for_graph_file(plugins)
        spec = load_for_drawing(path, list(overrides or []))
    plan, facts, refs = plan_for_drawing(spec)
    return build_diagram(spec, plan, facts, refs, stage=stage, results=results, legend=legend, direction=direction)


def cmd_draw(args: argparse.Namespace) -> int:
    from .args import split_args, with_preset

    files, overrides = split_args(args.items)
    overrides = with_preset(args, overrides)
    if len(files) != 1:
        raise DrawError("draw takes one graph file or run directory (and key=value overrides)")
    if (args.output is None) == (args.format is None):
        raise DrawError("give either -o FILE (.svg .png .pdf .dot .mmd) or --format dot|mmd to print the source")
    if args.output:
        check_output(Path(args.output))
    from .plugin_trust import choice_of

    d = diagram_of(
        files[0],
        overrides,
        stage=args.stage,
        legend=not args.no_legend,
        direction=args.direction,
        plugins=choice_of(args),
    )
    if args.format:
        print(to_dot(d) if args.format == "dot" else to_mermaid(d), end="")
        return 0
    out = Path(args.output)
    render(d, out)
    print(f"wrote {out}")
    return 0
