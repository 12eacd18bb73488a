"""The planner: a pure function from a GraphSpec (and what each built node publishes) to a Plan.

For every stage it decides which nodes run, in which order, which train, which run under
``no_grad``, where each loss is computed, which side of each loss is detached, and after which step
every value can be freed. Nothing here touches a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PlanError, Problem, did_you_mean
from .registry import LOSSES, PortInfo
from .spec import GraphSpec, StageSpec
from .spec.dataflow import DATA, dataflow_graph, needed, node_of, port_of, topo_order
from .spec.digraph import Digraph, ancestors

DATA_INFO = {"image": PortInfo("map"), "label": PortInfo("any"), "index": PortInfo("any")}


@dataclass(frozen=True)
class NodeFacts:
    """What the planner needs to know of a built node."""

    ports: dict[str, PortInfo]
    params: int  # number of parameters
    stops_gradient: bool = False  # a `detach` op: nothing upstream receives gradient through it


@dataclass
class Step:
    kind: str  # "node" or "loss"
    name: str
    no_grad: bool = False
    wanted: frozenset[str] = frozenset()  # ports of the node that later steps read
    free: tuple[str, ...] = ()  # values dropped after this step


@dataclass
class StagePlan:
    name: str
    index: int
    edges: list[str]
    order: list[str]  # nodes computed during a training step, topologically sorted
    trainable: list[str]
    frozen: list[str]  # nodes with parameters that do not train in this stage
    no_grad: set[str]
    program: list[Step]
    eval_ports: list[str]
    eval_program: list[Step]
    fit: list[str] = field(default_factory=list)
    fit_program: list[Step] = field(default_factory=list)
    detach_target: dict[str, bool] = field(default_factory=dict)  # per edge: is its `from` side detached


@dataclass
class Plan:
    order: list[str]  # every node, topologically sorted
    stages: list[StagePlan]
    param_nodes: list[str]  # nodes that train in some stage: one param group each
    params: dict[str, int]
    deploy_nodes: list[str]
    deploy: str | None

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


def port_problems(spec: GraphSpec, facts: dict[str, NodeFacts]) -> list[Problem]:
    """Every port read by a node, an edge, eval or deploy exists on its node."""
    problems: list[Problem] = []

    def check(port: str, path: tuple) -> None:
        if not isinstance(port, str) or "." not in port:
            return  # not a port at all: the loader reports it
        node, name = port.split(".", 1)
        if node == DATA:
            return  # data ports, views included, are checked with the file (kdgraph.views)
        known = facts[node].ports if node in facts else None
        if known is not None and name not in known:
            problems.append(
                spec.problem(
                    path,
                    f"node {node!r} has no port {name!r}",
                    did_you_mean(name, list(known)) or f"its ports: {', '.join(known)}",
                    kind="port",
                )
            )

    for name, node in spec.nodes.items():
        listed = isinstance(spec.doc["nodes"][name].get("in"), list)
        for i, port in enumerate(node.inputs):
            check(port, ("nodes", name, "in", i) if listed else ("nodes", name, "in"))
    for e in spec.edges:
        check(e.target, ("edges", e.index, "from"))
        check(e.pred, ("edges", e.index, "to"))
        if e.sample_weight:
            check(e.sample_weight, ("edges", e.index, "sample_weight"))
        for key, port in e.port_params.items():
            check(port, ("edges", e.index, key))
    if spec.deploy:
        check(spec.deploy, ("deploy",))
    for s in spec.stages:
        for i, port in enumerate(s.eval):
            path = ("stages", s.index, "eval", i) if spec.doc.get("stages") else ("train", "eval", i)
            check(port, path)
            problems += _eval_problems(spec, facts, port, path)
    return problems


def _eval_problems(spec: GraphSpec, facts: dict[str, NodeFacts], port: str, path: tuple) -> list[Problem]:
    """Top-1/top-5 read one score per class: a feature map or vector is no prediction to rank."""
    node, _, name = port.partition(".") if isinstance(port, str) else ("", "", "")
    info = facts[node].ports.get(name) if node in facts else None
    if info is None or info.kind not in ("map", "vector"):
        return []  # logits, or not known before a tensor exists ("any"): the evaluation checks the shape
    what = (
        f"a feature map ({info.channels} channels)"
        if info.kind == "map"
        else f"a feature vector ({info.channels} channels)"
    )
    return [
        spec.problem(
            path,
            f"{port} is {what}, not class logits: top-1/top-5 need one score per class",
            f"evaluate a node's logits, e.g. {node}.logits" if "logits" in facts[node].ports else "evaluate logits",
            kind="port",
        )
    ]


def make_plan(spec: GraphSpec, facts: dict[str, NodeFacts]) -> Plan:
    """Plan every stage of `spec`; all problems are raised together as one PlanError."""
    order = topo_order(spec)
    problems = port_problems(spec, facts)
    if problems:
        raise PlanError(problems)
    g = dataflow_graph(spec)
    params = {n: facts[n].params for n in order}
    stages = [_plan_stage(spec, s, order, g, facts, problems) for s in spec.stages]
    trained_somewhere = {n for s in stages for n in s.trainable}
    for n in order:
        node = spec.nodes[n]
        if params[n] and not node.frozen and n not in trained_somewhere:
            if any(n in s.fit for s in spec.stages):
                continue  # fitted from data, not by gradient
            problems.append(
                spec.problem(
                    ("nodes", n),
                    f"trainable node {n!r} is reached by no loss",
                    "add a loss edge whose gradient reaches it, or set frozen: true",
                    kind="plan",
                )
            )
    deploy_nodes: list[str] = []
    if spec.deploy:
        target = node_of(spec.deploy)
        deploy_nodes = [n for n in order if n == target or n in ancestors(g, target)]
    if problems:
        raise PlanError(problems)
    return Plan(order, stages, [n for n in order if n in trained_somewhere], params, deploy_nodes, spec.deploy)


def _plan_stage(
    spec: GraphSpec,
    stage: StageSpec,
    order: list[str],
    g: Digraph,
    facts: dict[str, NodeFacts],
    problems: list[Problem],
) -> StagePlan:
    edges = [spec.edge(name) for name in stage.edges]
    if not edges and stage.epochs > 0:
        problems.append(
            spec.problem(
                ("stages", stage.index, "edges"),
                f"stage {stage.name!r} has no loss edge to train for {stage.epochs} epochs",
                "list its edges, or set epochs: 0 for a stage that only fits or initialises",
                kind="plan",
            )
        )
    frozen_here = {n for n in order if spec.nodes[n].frozen or n in stage.frozen or n in stage.fit}

    # gradient flows back from every learner port (and non-detached targets, learned loss parameters)
    # through the data-flow graph, except through ops that stop it
    def grad_ancestors(node: str) -> set[str]:
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            if n in seen or n == DATA:
                continue
            seen.add(n)
            if not facts[n].stops_gradient:
                todo.extend(g.predecessors(n))
        return seen

    reach: dict[str, set[str]] = {}
    for e in edges:
        seeds = [e.pred] + ([] if e.detach else [e.target]) + list(e.port_params.values())
        reach[e.name] = set().union(*(grad_ancestors(node_of(p)) for p in seeds))
    reached = set().union(*reach.values()) if reach else set()
    trainable = [n for n in order if facts[n].params and n not in frozen_here and n in reached]
    for e in edges:
        if not reach[e.name] & set(trainable):
            problems.append(
                spec.problem(
                    ("edges", e.index),
                    f"loss {e.name!r} reaches no trainable parameter"
                    + (f" in stage {stage.name!r}" if spec.doc.get("stages") else ""),
                    "point `to` at a trainable node, or unfreeze one upstream of it",
                    kind="plan",
                )
            )

    # nodes whose output must carry gradient: reached, and something at or above them trains
    trainable_set = set(trainable)
    needs_grad = {n for n in reached if ({n} | ancestors(g, n)) & trainable_set}

    # ports each edge reads, and the nodes needed to compute them (a `call` op does not need its
    # referenced node to run, only its module: value flow alone decides what runs)
    values = dataflow_graph(spec, refs=False)
    reads = {e.name: _edge_ports(e) for e in edges}
    needed_ports = [p for ports in reads.values() for p in ports]
    order_train = needed(order, values, needed_ports)
    program = build_program(
        spec, order_train, needed_ports, [(e.name, reads[e.name]) for e in edges], lambda n: n not in needs_grad
    )

    eval_ports = list(stage.eval) or ([spec.deploy] if spec.deploy else [])
    order_eval = needed(order, values, eval_ports)
    eval_program = build_program(spec, order_eval, eval_ports, [], lambda n: True, keep=eval_ports)

    fit_inputs = [p for n in stage.fit for p in spec.nodes[n].inputs]
    order_fit = needed(order, values, fit_inputs)
    fit_program = build_program(spec, order_fit, fit_inputs, [], lambda n: True, keep=fit_inputs)

    return StagePlan(
        name=stage.name,
        index=stage.index,
        edges=[e.name for e in edges],
        order=order_train,
        trainable=trainable,
        frozen=[n for n in order if facts[n].params and n not in trainable_set],
        no_grad={n for n in order_train if n not in needs_grad},
        program=program,
        eval_ports=eval_ports,
        eval_program=eval_program,
        fit=list(stage.fit),
        fit_program=fit_program,
        detach_target={e.name: e.detach for e in edges},
    )


def _edge_ports(e) -> list[str]:
    # a loss that declares `labels` reads data.label too: it must not be freed before that loss runs
    labels = ["data.label"] if e.loss in LOSSES and "labels" in LOSSES.get(e.loss).parameters() else []
    return [e.target, e.pred, *e.port_params.values(), *([e.sample_weight] if e.sample_weight else []), *labels]


def build_program(
    spec: GraphSpec,
    order: list[str],
    sink_ports: list[str],
    losses: list[tuple[str, list[str]]],
    no_grad,
    keep: list[str] = (),
) -> list[Step]:
    """Node steps in order, each loss right after the last node it reads; frees after last use."""
    steps: list[Step] = []
    position = {n: i for i, n in enumerate(order)}
    consumers: dict[str, list[str]] = {n: [] for n in order}
    for n in order:
        for p in spec.nodes[n].inputs:
            if node_of(p) in consumers:
                consumers[node_of(p)].append(p)
    wanted: dict[str, set[str]] = {n: set() for n in order}
    for n in order:
        for p in spec.nodes[n].inputs:
            if node_of(p) in wanted:
                wanted[node_of(p)].add(port_of(p))
    for p in sink_ports:
        if node_of(p) in wanted:
            wanted[node_of(p)].add(port_of(p))
    losses_after: dict[int, list[str]] = {}
    for name, ports in losses:
        last = max((position[node_of(p)] for p in ports if node_of(p) in position), default=-1)
        losses_after.setdefault(last, []).append(name)
    for name in losses_after.get(-1, []):
        steps.append(Step("loss", name))
    for i, n in enumerate(order):
        steps.append(Step("node", n, no_grad=bool(no_grad(n)), wanted=frozenset(wanted[n])))
        steps.extend(Step("loss", name) for name in losses_after.get(i, []))
    # last use of each value: the last step that reads it
    reads_of: dict[int, list[str]] = {}
    loss_reads = dict(losses)
    for k, step in enumerate(steps):
        if step.kind == "node":
            reads_of[k] = list(spec.nodes[step.name].inputs)
        else:
            reads_of[k] = loss_reads[step.name]
    last_use: dict[str, int] = {}
    for k, ports in reads_of.items():
        for p in ports:
            last_use[p] = k
    for k, step in enumerate(steps):
        if step.kind == "node":
            for port in step.wanted:  # a value nobody reads again is dropped at once
                last_use.setdefault(f"{step.name}.{port}", k)
    frees: dict[int, list[str]] = {}
    for p, k in last_use.items():
        if p not in keep:
            frees.setdefault(k, []).append(p)
    for k, step in enumerate(steps):
        step.free = tuple(sorted(frees.get(k, [])))
    return steps


def cacheable(spec: GraphSpec, stage: StagePlan) -> dict[str, frozenset[str]]:
    """Nodes of a stage's training step whose outputs are a fixed function of the sample, with the ports read.

    A net that is frozen in the stage (so in eval mode: no dropout, BN statistics fixed), runs under
    ``no_grad`` and reads nothing but the default image computes, for each sample, a function of its index
    and of the augmentation drawn for it: its values can be stored per (sample, augmentation) and gathered
    (``train.cache``). Fitted nodes change during the stage and are left out.
    """
    out = {}
    for step in stage.program:
        node = spec.nodes.get(step.name)
        if (
            step.kind == "node"
            and node is not None
            and node.kind == "net"
            and step.name in stage.frozen
            and step.name not in stage.fit
            and step.no_grad
            and list(node.inputs) == [f"{DATA}.image"]
            and step.wanted
        ):
            out[step.name] = step.wanted
    return out


def fusable_peers(spec: GraphSpec, stage: StagePlan) -> list[tuple[str, ...]]:
    """Groups of a stage's nets that may run as one batched call (train.fuse, kdgraph/fuse.py), in program order.

    Peers compute k independent functions of one tensor: same net and constructor parameters, the same
    single input, the same mode in the stage (all trained with gradient, or all frozen under ``no_grad``),
    no taps (forward hooks see one net's modules) and not fitted. Whether the net's modules stack is proven
    when the nets are built (``fuse.fuse_peers``).
    """
    groups: dict[tuple, list[str]] = {}
    for step in stage.program:
        node = spec.nodes.get(step.name)
        if step.kind != "node" or node is None or node.kind != "net" or node.taps or len(node.inputs) != 1:
            continue
        if step.name in stage.fit or (step.name not in stage.trainable and step.name not in stage.frozen):
            continue
        mode = (step.name in stage.trainable, step.no_grad)
        key = (node.type, repr(sorted(node.params.items())), node.inputs[0], mode)
        groups.setdefault(key, []).append(step.name)
    return [tuple(names) for names in groups.values() if len(names) > 1]
