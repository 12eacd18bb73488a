"""The normalised graph: GraphSpec, NodeSpec, EdgeSpec, StageSpec, made from a checked document."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Problem, did_you_mean
from .defaults import DATA_DEFAULTS, TRAIN_DEFAULTS
from .document import Locator, Path_, merge

# node.port; data's named views add one level: data.<view>.image
PORT_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_/]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)$")
DATA_PORTS = ("image", "label", "index")
NODE_KEYS = ("net", "op", "in", "frozen", "init", "optim", "taps", "label")
EDGE_KEYS = ("loss", "from", "to", "weight", "detach", "name", "sample_weight", "optim")
ENGINE_ARGS = ("in_info", "nodes", "num_classes", "in_channels", "image_size", "num_train")


@dataclass
class NodeSpec:
    name: str
    kind: str  # "net" or "op"
    type: str  # registry name
    inputs: list[str]
    params: dict[str, Any]
    frozen: bool = False
    init: dict | None = None
    optim: dict = field(default_factory=dict)
    taps: dict[str, str] = field(default_factory=dict)
    label: str | None = None


@dataclass
class EdgeSpec:
    name: str
    loss: str
    target: str  # the YAML's `from`: the knowledge, the loss's `target` argument (detached by default)
    pred: str  # the YAML's `to`: the learner, the loss's `pred` argument
    weight: Any = 1.0  # number or schedule mapping
    params: dict[str, Any] = field(default_factory=dict)  # numbers, schedules or port names
    detach: bool = True
    sample_weight: str | None = None
    index: int = 0
    optim: str | None = None  # the gradient route into the optimizer (kdgraph/routes.py); None: "main"

    @property
    def port_params(self) -> dict[str, str]:
        """Loss parameters given as ports (a learned temperature: T: temp.out)."""
        return {k: v for k, v in self.params.items() if isinstance(v, str) and PORT_RE.match(v) and not _is_word(v)}


def _is_word(text: str) -> bool:
    return "." not in text


@dataclass
class StageSpec:
    name: str
    edges: list[str]
    epochs: int
    train: dict[str, Any]
    frozen: list[str] = field(default_factory=list)
    fit: list[str] = field(default_factory=list)
    init: dict[str, dict] = field(default_factory=dict)
    eval: list[str] = field(default_factory=list)
    index: int = 0


@dataclass
class GraphSpec:
    name: str
    title: str
    cite: str
    source: Path | None
    doc: dict  # the resolved document (vars substituted), after overrides
    data: dict[str, Any]
    train: dict[str, Any]
    nodes: dict[str, NodeSpec]
    edges: list[EdgeSpec]
    stages: list[StageSpec]
    deploy: str | None
    locator: Locator
    overrides: list[str] = field(default_factory=list)

    def edge(self, name: str) -> EdgeSpec:
        return next(e for e in self.edges if e.name == name)

    def problem(self, path: Path_, message: str, hint: str | None = None, kind: str = "spec") -> Problem:
        return self.locator.problem(path, message, hint, kind)

    def node_path(self, name: str) -> Path_:
        return ("nodes", name)

    def edge_path(self, edge: EdgeSpec) -> Path_:
        return ("edges", edge.index)

    def hash(self) -> str:
        """Identity of what this graph computes: the resolved document, minus cosmetic keys."""
        doc = {k: v for k, v in self.doc.items() if k not in ("title", "cite", "notes", "published", "pairs")}
        blob = json.dumps(doc, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()


def normalise(
    doc: dict, source: Path | None, locator: Locator, overrides: list[str], problems: list[Problem]
) -> GraphSpec:
    data = merge(DATA_DEFAULTS, doc.get("data") or {})
    if data["eval_batch_size"] is None:
        data["eval_batch_size"] = max(int(data["batch_size"]), 256)
    train = merge(TRAIN_DEFAULTS, doc.get("train") or {})
    nodes: dict[str, NodeSpec] = {}
    for name, raw in (doc.get("nodes") or {}).items():
        kind = "net" if "net" in raw else "op"
        inputs = raw.get("in", "data.image" if kind == "net" else [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        params = {k: v for k, v in raw.items() if k not in NODE_KEYS}
        nodes[name] = NodeSpec(
            name,
            kind,
            raw[kind],
            inputs,
            params,
            bool(raw.get("frozen", False)),
            raw.get("init"),
            dict(raw.get("optim") or {}),
            dict(raw.get("taps") or {}),
            raw.get("label"),
        )
    edges: list[EdgeSpec] = []
    names: dict[str, int] = {}
    for i, raw in enumerate(doc.get("edges") or []):
        params = {k: v for k, v in raw.items() if k not in EDGE_KEYS}
        name = raw.get("name") or default_edge_name(raw["loss"], raw["from"], raw["to"])
        if name in names:
            if raw.get("name"):
                problems.append(
                    locator.problem(
                        ("edges", i, "name"), f"edge name {name!r} is used twice", "give each edge a distinct name"
                    )
                )
            else:
                name = f"{name}#{i}"
        names[name] = i
        edges.append(
            EdgeSpec(
                name,
                raw["loss"],
                raw["from"],
                raw["to"],
                raw.get("weight", 1.0),
                params,
                bool(raw.get("detach", True)),
                raw.get("sample_weight"),
                i,
                raw.get("optim"),
            )
        )
    stages: list[StageSpec] = []
    edge_names = [e.name for e in edges]
    for i, raw in enumerate(doc.get("stages") or []):
        st_train = merge(train, raw.get("train") or {})
        epochs = int(raw.get("epochs", st_train["epochs"]))
        st_train["epochs"] = epochs
        st_edges = list(raw.get("edges", edge_names))
        for j, e in enumerate(st_edges):
            if e not in edge_names:
                problems.append(
                    locator.problem(
                        ("stages", i, "edges", j),
                        f"stage {raw['name']!r} names unknown edge {e!r}",
                        did_you_mean(e, edge_names) or f"known edges: {', '.join(edge_names)}",
                    )
                )
        stages.append(
            StageSpec(
                raw["name"],
                st_edges,
                epochs,
                st_train,
                list(raw.get("frozen", [])),
                list(raw.get("fit", [])),
                dict(raw.get("init") or {}),
                list(raw.get("eval", train["eval"])),
                i,
            )
        )
    seen_stages: set[str] = set()
    for stage in stages:
        if stage.name in seen_stages:
            problems.append(
                locator.problem(
                    ("stages", stage.index, "name"), f"stage name {stage.name!r} is used twice", "rename one"
                )
            )
        seen_stages.add(stage.name)
    if not stages:
        stages = [StageSpec("main", edge_names, int(train["epochs"]), train, eval=list(train["eval"]))]
    return GraphSpec(
        name=doc["name"],
        title=doc.get("title", doc["name"]),
        cite=doc.get("cite", ""),
        source=source,
        doc=doc,
        data=data,
        train=train,
        nodes=nodes,
        edges=edges,
        stages=stages,
        deploy=doc.get("deploy"),
        locator=locator,
        overrides=overrides,
    )


def default_edge_name(loss: str, target: str, pred: str) -> str:
    """`loss:fromnode->tonode`, as `kdgraph plan` shows an edge without a `name`."""
    return f"{loss}:{target.split('.')[0]}->{pred.split('.')[0]}"
