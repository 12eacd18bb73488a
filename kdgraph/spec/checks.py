"""Meaning checks of a normalised spec: names exist, parameters fit signatures, ports and inits resolve."""

from __future__ import annotations

from typing import Any

from ..catalog import load_builtins
from ..errors import Problem, did_you_mean
from ..params import Param
from ..registry import DATASETS, LOSSES, NETS, OPS, Entry, RegistryError
from ..routes import route_problems
from ..schedule import Schedule
from ..views import data_port_problem
from .document import Path_
from .model import EDGE_KEYS, ENGINE_ARGS, NODE_KEYS, PORT_RE, GraphSpec


def registry_problems(spec: GraphSpec) -> list[Problem]:
    """Names exist in the registries, parameters fit signatures, ports name existing nodes."""
    load_builtins()
    problems: list[Problem] = route_problems(spec)
    known_nodes = set(spec.nodes) | {"data"}
    for name, node in spec.nodes.items():
        registry = NETS if node.kind == "net" else OPS
        try:
            entry = registry.get(node.type)
        except RegistryError:
            problems.append(
                spec.problem(
                    ("nodes", name, node.kind),
                    f"unknown {node.kind} {node.type!r}",
                    registry.suggest(node.type) or f"see `kdgraph list {node.kind}s`",
                )
            )
            continue
        problems += _param_problems(entry, node.params, ("nodes", name), spec, reserved=NODE_KEYS)
        for i, port in enumerate(node.inputs):
            problems += _port_ref_problems(
                port,
                ("nodes", name, "in", i)
                if "in" in spec.doc["nodes"][name] and isinstance(spec.doc["nodes"][name]["in"], list)
                else ("nodes", name, "in"),
                known_nodes,
                spec,
            )
        if node.init:
            problems += _init_problems(node.init, ("nodes", name, "init"), spec)
    for edge in spec.edges:
        path = ("edges", edge.index)
        try:
            entry = LOSSES.get(edge.loss)
        except RegistryError:
            problems.append(
                spec.problem(
                    (*path, "loss"),
                    f"unknown loss {edge.loss!r}",
                    LOSSES.suggest(edge.loss) or "see `kdgraph list losses`",
                )
            )
            continue
        problems += _param_problems(entry, edge.params, path, spec, reserved=EDGE_KEYS, loss=True)
        problems += _port_ref_problems(edge.target, (*path, "from"), known_nodes, spec)
        problems += _port_ref_problems(edge.pred, (*path, "to"), known_nodes, spec)
        if edge.sample_weight:
            problems += _port_ref_problems(edge.sample_weight, (*path, "sample_weight"), known_nodes, spec)
            if "sample_weight" not in entry.parameters():
                problems.append(
                    spec.problem((*path, "sample_weight"), f"loss {edge.loss!r} takes no per-sample weights")
                )
        for key, port in edge.port_params.items():
            problems += _port_ref_problems(port, (*path, key), known_nodes, spec)
        problems += _schedule_problems(edge.weight, (*path, "weight"), spec)
    for stage in spec.stages:
        for key in ("frozen", "fit"):
            for j, n in enumerate(getattr(stage, key)):
                if n not in spec.nodes:
                    problems.append(
                        spec.problem(
                            ("stages", stage.index, key, j), f"unknown node {n!r}", did_you_mean(n, list(spec.nodes))
                        )
                    )
        for n, init in stage.init.items():
            if n not in spec.nodes:
                problems.append(
                    spec.problem(
                        ("stages", stage.index, "init", n), f"unknown node {n!r}", did_you_mean(n, list(spec.nodes))
                    )
                )
            else:
                problems += _init_problems(init, ("stages", stage.index, "init", n), spec, stage.index)
    dataset = spec.data.get("dataset")
    if dataset not in DATASETS:
        problems.append(
            spec.problem(
                ("data", "dataset"),
                f"unknown dataset {dataset!r}",
                DATASETS.suggest(str(dataset)) or f"known datasets: {', '.join(DATASETS.names())}",
            )
        )
    if spec.deploy:
        problems += _port_ref_problems(spec.deploy, ("deploy",), known_nodes, spec)
    for i, port in enumerate(spec.train["eval"]):
        problems += _port_ref_problems(port, ("train", "eval", i), known_nodes, spec)
        if isinstance(port, str) and port.startswith("data."):  # labels or images are no class scores
            hint = "evaluate a node's logits"
            problems.append(spec.problem(("train", "eval", i), f"{port} is not a prediction", hint))
    return problems


def _param_problems(
    entry: Entry, params: dict, path: Path_, spec: GraphSpec, reserved: tuple, loss: bool = False
) -> list[Problem]:
    problems = []
    allowed = {k: p for k, p in entry.parameters().items() if k not in ("in_info", "nodes")}
    if loss:
        allowed = {k: p for k, p in list(allowed.items())[2:] if k not in ("labels", "sample_weight")}
    for key in params:
        if key not in allowed and not entry.accepts_any_keyword():
            hint = did_you_mean(key, list(allowed) + list(reserved))
            known = ", ".join(allowed) or "none"
            problems.append(
                spec.problem(
                    (*path, key),
                    f"{entry.kind} {entry.name!r} has no parameter {key!r}",
                    hint or f"its parameters: {known}",
                )
            )
    for key, p in allowed.items():
        if p.default is p.empty and key not in params and key not in ENGINE_ARGS:
            problems.append(spec.problem(path, f"{entry.kind} {entry.name!r} needs parameter {key!r}"))
    for key, value in params.items():
        if isinstance(value, dict) and key in allowed:
            problems += _schedule_problems(value, (*path, key), spec)
    declared = entry.declared()
    for key, value in params.items():
        if key in allowed and key in declared:
            problems += _value_problems(entry, key, declared[key], value, (*path, key), spec)
    return problems


def _value_problems(entry: Entry, key: str, param: Param, value: Any, path: Path_, spec: GraphSpec) -> list[Problem]:
    """`value` fits the parameter's declared type and range (kdgraph.params)."""
    if isinstance(value, str) and "${" in value:
        return []  # an unresolved expression: its own problem is reported by the vars phase
    if param.port and isinstance(value, str) and PORT_RE.match(value):
        return []  # a learned value (CTKD's temperature) exists at run time; the ops making it bound it
    why = param.problem(value, schedules=entry.kind == "loss")  # an edge evaluates any schedule per epoch
    if why is None:
        return []
    hint = f"{entry.kind} {entry.name!r} takes {key}: {param.describe()}"
    sources = [f"vars.{k}" for k, v in (spec.doc.get("vars") or {}).items() if isinstance(value, str) and v == value]
    if sources and param.type in ("real", "int"):  # a word that came from vars: name where it came from
        return [spec.problem(path, f"{key} = {value!r} (from {', '.join(sources)}) is not a number", hint)]
    return [spec.problem(path, why, hint)]


def _schedule_problems(value: Any, path: Path_, spec: GraphSpec) -> list[Problem]:
    if not isinstance(value, dict):
        return []
    try:
        Schedule.from_spec(value)
    except ValueError as e:
        return [spec.problem(path, f"bad schedule: {e}")]
    return []


def _port_ref_problems(port: Any, path: Path_, known_nodes: set[str], spec: GraphSpec) -> list[Problem]:
    if not isinstance(port, str) or not PORT_RE.match(port):
        return [spec.problem(path, f"{port!r} is not a port", "write node.port, e.g. teacher.logits")]
    node, name = port.split(".", 1)
    if node not in known_nodes:
        return [
            spec.problem(
                path,
                f"unknown node {node!r} in port {port!r}",
                did_you_mean(node, sorted(known_nodes)) or f"known nodes: {', '.join(sorted(known_nodes))}",
            )
        ]
    bad = data_port_problem(name, spec.data) if node == "data" else None  # views add data.<view>.image
    return [spec.problem(path, *bad)] if bad else []


def _init_problems(init: dict, path: Path_, spec: GraphSpec, stage_index: int | None = None) -> list[Problem]:
    keys = [k for k in ("checkpoint", "from", "stage", "snapshot", "seed") if k in init]
    if len(keys) != 1:
        return [spec.problem(path, "init needs exactly one of checkpoint, from, stage, snapshot, seed")]
    kind = keys[0]
    if kind == "checkpoint":
        target = (spec.base_dir / init["checkpoint"]).expanduser()
        if not target.exists():
            return [
                spec.problem(
                    (*path, "checkpoint"),
                    f"checkpoint {str(target)!r} does not exist",
                    "give a path relative to the graph file, or train it with init: {from: GRAPH.yaml}",
                    kind="missing_file",
                )
            ]
    if kind == "from":
        target = spec.base_dir / init["from"]
        if not target.is_file():
            if not target.exists():
                message, kind = f"graph file {str(target)!r} does not exist", "missing_file"
            else:
                what = "is a directory, not a graph file" if target.is_dir() else "is not a regular file"
                message, kind = f"graph file {str(target)!r} {what}", "not_a_file"
            return [spec.problem((*path, "from"), message, kind=kind)]
    if kind in ("stage", "snapshot"):
        names = [s.name for s in spec.stages]
        if init[kind] not in names:
            return [spec.problem((*path, kind), f"unknown stage {init[kind]!r}", did_you_mean(init[kind], names))]
        pos = names.index(init[kind])
        limit = stage_index if stage_index is not None else -1
        if kind == "stage" and pos >= limit:
            return [
                spec.problem(
                    (*path, kind),
                    f"stage {init[kind]!r} has not ended before this point",
                    "init from the end of an earlier stage only",
                )
            ]
        if kind == "snapshot" and pos > limit:
            return [spec.problem((*path, kind), f"stage {init[kind]!r} has not started before this point")]
    return []
