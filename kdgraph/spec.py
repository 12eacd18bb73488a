"""Graph files: YAML with line numbers, overrides, JSON Schema, vars, meaning checks -> GraphSpec.

    spec = load_spec("graphs/kd.yaml", overrides=["train.epochs=2"])

Every problem found is collected and raised together as one ``SpecError`` whose lines name the
file, the YAML line, the dotted path and, for unknown names, the nearest known ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from . import expr
from .errors import PlanError, Problem, SpecError, did_you_mean
from .presets import apply_named_preset
from .registry import LOSSES, NETS, OPS, Entry, RegistryError, load_builtins

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "graph.schema.json"
PORT_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_/]*)$")
DATA_PORTS = ("image", "label", "index")
NODE_KEYS = ("net", "op", "in", "frozen", "init", "optim", "taps", "label")
EDGE_KEYS = ("loss", "from", "to", "weight", "detach", "name", "sample_weight")
ENGINE_ARGS = ("in_info", "nodes", "num_classes", "in_channels", "image_size")

Path_ = tuple  # a path inside the document: ("nodes", "student", "net") or ("edges", 2, "to")


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ----------------------------------------------------------------------------- locating problems


@dataclass
class Locator:
    """Where each path of the document came from: (file, line), or an override on the command line."""

    origins: dict[Path_, tuple[str, int | None]] = field(default_factory=dict)
    default_file: str = "<graph>"

    def where(self, path: Path_) -> tuple[str, int | None]:
        for n in range(len(path), -1, -1):
            if tuple(path[:n]) in self.origins:
                return self.origins[tuple(path[:n])]
        return self.default_file, None

    def problem(self, path: Path_, message: str, hint: str | None = None) -> Problem:
        file, line = self.where(path)
        return Problem(format_path(path), message, line, file, hint)


def read_yaml(path: Path, locator: Locator, problems: list[Problem]) -> Any:
    """Parse one YAML file, recording each path's line; duplicate keys are problems."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(Problem("", f"graph file {str(path)!r} does not exist", file=str(path))) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(Problem("", f"cannot read graph file: {e}", file=str(path))) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        what = getattr(e, "problem", None) or str(e).split("\n")[0]
        raise SpecError(
            Problem("", f"malformed YAML: {what}", mark.line + 1 if mark else None, str(path), "fix the YAML syntax")
        ) from None
    finally:
        loader.dispose()
    if node is not None:
        _record_lines(node, (), str(path), locator, problems)
    return data


def _record_lines(node: yaml.Node, path: Path_, file: str, locator: Locator, problems: list[Problem]) -> None:
    locator.origins[path] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(
                    Problem(
                        format_path((*path, key)),
                        "duplicate key",
                        key_node.start_mark.line + 1,
                        file,
                        "each key may appear once per mapping",
                    )
                )
            seen.add(key)
            locator.origins[(*path, key)] = (file, key_node.start_mark.line + 1)
            _record_lines(value_node, (*path, key), file, locator, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*path, i), file, locator, problems)


# ----------------------------------------------------------------------------- overrides


def parse_override_key(key: str) -> Path_:
    """'edges[2].weight' or 'edges.2.weight' -> ('edges', 2, 'weight')."""
    parts: list[Any] = []
    for token in re.split(r"\.|\[|\]", key):
        if token == "":
            continue
        parts.append(int(token) if re.fullmatch(r"-?\d+", token) else token)
    return tuple(parts)


def apply_overrides(doc: dict, overrides: list[str], locator: Locator) -> list[Problem]:
    """Apply `key=value`, `+key=value` (add), `++key=value` (add or replace) and `~key` (remove), in order."""
    problems: list[Problem] = []
    for text in overrides:
        origin = ("<command line>", None)
        where = f"override {text!r}"
        mode = "set"
        body = text
        if text.startswith("++"):
            mode, body = "force", text[2:]
        elif text.startswith("+"):
            mode, body = "add", text[1:]
        elif text.startswith("~"):
            mode, body = "remove", text[1:]
        if mode == "remove":
            key, raw = body, None
        elif "=" not in body:
            problems.append(
                Problem("", f"{where} has no '='", file="<command line>", hint="write key=value, +key=value or ~key")
            )
            continue
        else:
            key, raw = body.split("=", 1)
        path = parse_override_key(key.strip())
        if not path:
            problems.append(Problem("", f"{where} names no key", file="<command line>"))
            continue
        try:
            value = yaml.safe_load(raw) if raw is not None else None
        except yaml.YAMLError:
            problems.append(
                Problem(format_path(path), f"{where}: value is not valid YAML", file="<command line>", hint="quote it")
            )
            continue
        if path == ("preset",) and mode == "set":  # `--preset NAME`: a whole small-run rewrite, see presets.py
            problems += apply_named_preset(doc, value, locator.default_file)
            continue
        parent: Any = doc
        ok = True
        for i, part in enumerate(path[:-1]):
            child = _child(parent, part)
            if child is _MISSING and (mode == "force" or _has_default(path[: i + 1])) and isinstance(parent, dict):
                child = parent[part] = {}  # ++ creates the mappings on its way
            if child is _MISSING:
                hint = _key_hint(parent, part)
                problems.append(
                    Problem(format_path(path[: i + 1]), f"{where}: no such key", file="<command line>", hint=hint)
                )
                ok = False
                break
            parent = child
        if not ok:
            continue
        last = path[-1]
        exists = _child(parent, last) is not _MISSING
        if mode == "set" and not exists and _has_default(path):
            mode = "add"  # a setting with a default exists even when the file does not write it
        if mode == "set" and not exists:
            known = list(parent) if isinstance(parent, dict) else []
            known += list(_defaults_at(path[:-1]))
            hint = (did_you_mean(str(last), sorted({str(k) for k in known})) if known else _key_hint(parent, last)) or (
                f"use +{key}=... to add a new key"
            )
            problems.append(Problem(format_path(path), f"{where}: no such key", file="<command line>", hint=hint))
            continue
        if mode == "add" and exists:
            problems.append(
                Problem(
                    format_path(path),
                    f"{where}: key already exists",
                    file="<command line>",
                    hint=f"use {key}=... to change it",
                )
            )
            continue
        if mode == "remove" and not exists:
            problems.append(
                Problem(
                    format_path(path),
                    f"{where}: no such key to remove",
                    file="<command line>",
                    hint=_key_hint(parent, last),
                )
            )
            continue
        if mode == "remove":
            del parent[last]
            continue
        if path == ("data", "root") and isinstance(value, str) and not Path(value).expanduser().is_absolute():
            value = str(Path.cwd() / value)  # a path typed on the command line is relative to where it was typed
        if isinstance(parent, list):
            if last == len(parent):
                parent.append(value)
            else:
                parent[last] = value
        elif isinstance(parent, dict):
            parent[last] = value
        else:
            problems.append(Problem(format_path(path[:-1]), f"{where}: not a mapping or list", file="<command line>"))
            continue
        for p in [p for p in locator.origins if p[: len(path)] == path]:
            del locator.origins[p]
        locator.origins[path] = origin
    return problems


_MISSING = object()


def _defaults_at(path: Path_) -> dict:
    node: Any = {"train": TRAIN_DEFAULTS, "data": DATA_DEFAULTS}
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _has_default(path: Path_) -> bool:
    """`train.limit_batches`, `data.subset`, `train.optimizer.nesterov`: keys with a built-in default."""
    node: Any = {"train": TRAIN_DEFAULTS, "data": DATA_DEFAULTS}
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _child(parent: Any, part: Any) -> Any:
    if isinstance(parent, dict):
        return parent.get(part, _MISSING)
    if isinstance(parent, list) and isinstance(part, int):
        return parent[part] if -len(parent) <= part < len(parent) else _MISSING
    return _MISSING


def _key_hint(parent: Any, part: Any) -> str | None:
    if isinstance(parent, dict):
        return did_you_mean(str(part), [str(k) for k in parent])
    if isinstance(parent, list):
        return f"the list has {len(parent)} items, indices 0..{len(parent) - 1}; +key appends at index {len(parent)}"
    return None


# ----------------------------------------------------------------------------- schema


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _schema_errors(doc: Any) -> list[Any]:
    """The most specific schema errors: inside `anyOf`, those of the branch a mapping or list was meant for."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = [leaf for err in validator.iter_errors(doc) for leaf in _leaves(err)]
    return sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])


def _leaves(err: Any) -> list[Any]:
    # {value: 1, warmpu: 5} as a weight fails "number", "string" and "schedule": only the last is news
    if err.validator == "anyOf" and isinstance(err.instance, (dict, list)):
        inner = [c for c in err.context if c.validator != "type"]
        if inner:
            return [leaf for c in inner for leaf in _leaves(c)]
    return [err]


def schema_problems(doc: Any, locator: Locator) -> list[Problem]:
    """Every JSON Schema violation of `doc`, located, with the fix where one is known."""
    return _dedupe([p for err in _schema_errors(doc) for p in _schema_problem(err, tuple(err.absolute_path), locator)])


def _unknown_keys(err: Any) -> list[str]:
    return sorted(set(err.instance) - set(err.schema.get("properties", {})), key=str)


def prune_unknown_keys(doc: Any) -> bool:
    """Drop the keys the schema does not know, so checking can go on; True when the rest is valid.

    A misspelt key is reported by itself; what the rest of the file says is still worth checking.
    """
    for _ in range(8):  # an unknown key may hide another one inside a sibling: a few rounds suffice
        errors = _schema_errors(doc)
        if not errors:
            return True
        unknown = [e for e in errors if e.validator == "additionalProperties" and e.validator_value is False]
        if len(unknown) != len(errors):
            return False
        for err in unknown:
            for key in _unknown_keys(err):
                err.instance.pop(key, None)
    return False


def _schema_problem(err: Any, path: Path_, locator: Locator) -> list[Problem]:
    if err.validator == "additionalProperties":
        known = list(err.schema.get("properties", {}))
        return [
            locator.problem((*path, key), f"unknown key {key!r}", did_you_mean(str(key), known) or _known(known))
            for key in _unknown_keys(err) or ["?"]
        ]
    if err.validator == "required":
        key = err.message.split(" is a required property")[0].strip("'\"")  # one error per missing key
        return [locator.problem(path, f"{key!r} is required", _REQUIRED_HINTS.get(key))]
    if err.validator == "enum":
        allowed = ", ".join(repr(v) for v in err.validator_value)
        hint = did_you_mean(str(err.instance), [str(v) for v in err.validator_value])
        return [locator.problem(path, f"{err.instance!r} is not one of {allowed}", hint)]
    if err.validator == "const":
        return [locator.problem(path, f"must be {err.validator_value!r}, not {err.instance!r}")]
    if err.validator == "oneOf" and len(path) == 2 and path[0] == "nodes" and isinstance(err.instance, dict):
        if "net" in err.instance and "op" in err.instance:
            return [locator.problem(path, "a node is a 'net' or an 'op', not both", "keep one of them")]
        return [locator.problem(path, "a node needs 'net: NAME' or 'op: NAME'", "see `kdgraph list`")]
    if err.validator in ("anyOf", "oneOf"):
        desc = err.schema.get("description", "").rstrip(".")
        return [locator.problem(path, f"{err.instance!r} is not valid here", desc[:1].lower() + desc[1:] or None)]
    if err.validator == "type":
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in wanted)
        return [locator.problem(path, f"expected {names}, not {err.instance!r}")]
    if "propertyNames" in err.schema_path:
        return [
            locator.problem(
                (*path, err.instance),
                f"bad node name {err.instance!r}",
                "a node name is letters, digits and _, not starting with a digit; 'data' is reserved",
            )
        ]
    return [locator.problem(path, err.message)]


_REQUIRED_HINTS = {
    "kdgraph": "the spec version: kdgraph: 1",
    "name": "a short identifier, e.g. name: kd",
    "nodes": "e.g. nodes: {student: {net: resnet8x4}}",
    "loss": "e.g. loss: kd (see `kdgraph list losses`)",
    "from": "the target port, e.g. from: teacher.logits or from: data.label",
    "to": "the learner port, e.g. to: student.logits",
}
_TYPE_NAMES = {
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "null": "nothing (null)",
}


def _known(names: list[str]) -> str:
    return "known keys: " + ", ".join(names) if names else "no keys are allowed here"


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ----------------------------------------------------------------------------- vars


def resolve_vars(doc: dict, locator: Locator) -> tuple[Any, list[Problem]]:
    """Evaluate `vars` (which may refer to each other) and substitute ${...} everywhere else."""
    problems: list[Problem] = []
    raw_vars = dict(doc.get("vars") or {})
    env: dict[str, Any] = {}
    pending = dict(raw_vars)
    for _ in range(len(pending) + 1):
        progress = False
        for name, value in list(pending.items()):
            if isinstance(value, str) and "${" in value:
                try:
                    env[name] = expr.substitute(value, env)
                except expr.ExprError as e:
                    if "unknown var" in str(e) and any(
                        re.search(rf"\b{re.escape(p)}\b", value) for p in pending if p != name
                    ):
                        continue  # depends on a var not evaluated yet
                    problems.append(locator.problem(("vars", name), str(e), e.hint))
                    env[name] = value
            else:
                env[name] = value
            del pending[name]
            progress = True
        if not pending or not progress:
            break
    for name in pending:
        problems.append(locator.problem(("vars", name), "vars refer to each other in a cycle", "break the cycle"))
    broken = {p.path.split(".", 1)[1] for p in problems}

    def walk(obj: Any, path: Path_) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v, (*path, k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, str) and "${" in obj:
            try:
                return expr.substitute(obj, env)
            except expr.ExprError as e:
                if not any(re.search(rf"\b{re.escape(b)}\b", obj) for b in broken):  # else: an echo
                    problems.append(locator.problem(path, str(e), e.hint))
                return obj
        return obj

    out = {k: (env if k == "vars" else walk(v, (k,))) for k, v in doc.items()}
    return out, problems


# ----------------------------------------------------------------------------- the frozen spec


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
    src: str  # the `from` port (target / knowledge)
    dst: str  # the `to` port (learner)
    weight: Any = 1.0  # number or schedule mapping
    params: dict[str, Any] = field(default_factory=dict)  # numbers, schedules or port names
    detach: bool = True
    sample_weight: str | None = None
    index: int = 0

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


TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 1,
    "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4, "nesterov": False},
    "lr_schedule": {"type": "constant"},
    "precision": "fp32",
    "seed": 0,
    "eval": [],
    "eval_every": 1,
    "checkpoint_every": 500,
    "log_every": 50,
    "limit_batches": None,
    "limit_eval_batches": None,
    "channels_last": False,
    "compile": False,
    "on_nan": "stop",
    "grad_clip": None,
    "progress": True,
    "log_with": [],
}
DATA_DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic",
    "root": None,
    "download": False,  # a missing dataset is an error, never a silent multi-minute download
    "batch_size": 64,
    "eval_batch_size": None,
    "workers": 2,
    "augment": True,
    "subset": None,
    "loader": "host",
    "size": 256,
    "test_size": 128,
    "image_size": 32,
    "channels": 3,
    "classes": 10,
}


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

    def problem(self, path: Path_, message: str, hint: str | None = None) -> Problem:
        return self.locator.problem(path, message, hint)

    def node_path(self, name: str) -> Path_:
        return ("nodes", name)

    def edge_path(self, edge: EdgeSpec) -> Path_:
        return ("edges", edge.index)

    def hash(self) -> str:
        """Identity of what this graph computes: the resolved document, minus cosmetic keys."""
        doc = {k: v for k, v in self.doc.items() if k not in ("title", "cite", "notes", "published")}
        blob = json.dumps(doc, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()


def merge(base: dict, top: dict) -> dict:
    """Deep-merge `top` over `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_document(path: str | Path, problems: list[Problem], locator: Locator) -> dict:
    """The raw mapping of a graph file (with `extends` merged when the composition module is present)."""
    path = Path(path)
    doc = read_yaml(path, locator, problems)
    if not isinstance(doc, dict):
        raise SpecError(
            problems + [Problem("", "a graph file must be a mapping (kdgraph: 1, name:, nodes:, ...)", 1, str(path))]
        )
    if doc.get("extends"):
        try:
            from .compose import resolve_extends
        except ImportError:
            problems.append(locator.problem(("extends",), "extends is not available in this build"))
            return doc
        doc = resolve_extends(doc, path, locator, problems)
    return doc


def load_spec(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    document: dict | None = None,
    check_registry: bool = True,
) -> GraphSpec:
    """Load, override, validate and normalise a graph file; raise one SpecError with every problem.

    The phases (YAML, overrides, JSON Schema, vars, names, ports, cycles) go on as far as the file
    allows, so one report lists the problems of all of them. When the spec could be normalised the
    SpecError carries it, for the builder to look for more (see ``graph.check_graph``).
    """
    overrides = list(overrides or [])
    problems: list[Problem] = []
    locator = Locator(default_file=str(path) if path else "<graph>")
    if document is not None:
        doc = copy.deepcopy(document)
    else:
        assert path is not None
        doc = load_document(path, problems, locator)
    problems += apply_overrides(doc, overrides, locator)
    if doc.get("plugins") and path is not None:
        try:
            from .plugins import load_graph_plugins
        except ImportError:
            problems.append(locator.problem(("plugins",), "plugins are not available in this build"))
        else:
            problems += load_graph_plugins(doc["plugins"], Path(path).parent, locator)
    schema_errors = schema_problems(doc, locator)
    problems += schema_errors
    if schema_errors and not prune_unknown_keys(doc):
        raise SpecError(sort_problems(problems))
    doc, var_problems = resolve_vars(doc, locator)
    problems += var_problems
    if not var_problems:  # values that came from ${...} have their types checked now
        typed = schema_problems(doc, locator)
        if typed:
            raise SpecError(sort_problems(problems + typed))
    try:
        spec = _normalise(doc, Path(path) if path else None, locator, overrides, problems)
        if check_registry:
            problems += registry_problems(spec)
        from .plan import cycle_problems

        cycles = cycle_problems(spec)
        problems += cycles
    except (TypeError, ValueError, KeyError, AttributeError):
        if problems:  # an unresolved ${...} or a set-aside key broke what follows: report what we know
            raise SpecError(sort_problems(problems)) from None
        raise
    if problems:
        kind = PlanError if len(problems) == len(cycles) else SpecError  # a loop alone is the planner's finding
        raise kind(sort_problems(problems), spec=spec if not var_problems else None)
    return spec


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Without duplicates; command-line problems first, then by file and line (stable otherwise)."""
    order = {f: i for i, f in enumerate(dict.fromkeys(p.file for p in problems))}
    return sorted(_dedupe(problems), key=lambda p: (p.file != "<command line>", order[p.file], p.line if p.line else 0))


def _normalise(
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


def default_edge_name(loss: str, src: str, dst: str) -> str:
    return f"{loss}:{src.split('.')[0]}->{dst.split('.')[0]}"


# ----------------------------------------------------------------------------- meaning checks


def registry_problems(spec: GraphSpec) -> list[Problem]:
    """Names exist in the registries, parameters fit signatures, ports name existing nodes."""
    load_builtins()
    problems: list[Problem] = []
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
        problems += _port_ref_problems(edge.src, (*path, "from"), known_nodes, spec)
        problems += _port_ref_problems(edge.dst, (*path, "to"), known_nodes, spec)
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
    if spec.deploy:
        problems += _port_ref_problems(spec.deploy, ("deploy",), known_nodes, spec)
    for i, port in enumerate(spec.train["eval"]):
        problems += _port_ref_problems(port, ("train", "eval", i), known_nodes, spec)
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
    return problems


def _schedule_problems(value: Any, path: Path_, spec: GraphSpec) -> list[Problem]:
    if not isinstance(value, dict):
        return []
    from .schedule import Schedule

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
    if node == "data" and name not in DATA_PORTS:
        return [
            spec.problem(
                path, f"data has no port {name!r}", did_you_mean(name, DATA_PORTS) or "data ports: image, label, index"
            )
        ]
    return []


def _init_problems(init: dict, path: Path_, spec: GraphSpec, stage_index: int | None = None) -> list[Problem]:
    keys = [k for k in ("checkpoint", "from", "stage", "snapshot") if k in init]
    if len(keys) != 1:
        return [spec.problem(path, "init needs exactly one of checkpoint, from, stage, snapshot")]
    kind = keys[0]
    if kind == "checkpoint":
        target = (spec.base_dir / init["checkpoint"]).expanduser()
        if not target.exists():
            return [
                spec.problem(
                    (*path, "checkpoint"),
                    f"checkpoint {str(target)!r} does not exist",
                    "give a path relative to the graph file, or train it with init: {from: GRAPH.yaml}",
                )
            ]
    if kind == "from":
        target = spec.base_dir / init["from"]
        if not target.exists():
            return [spec.problem((*path, "from"), f"graph file {str(target)!r} does not exist")]
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


def dump_resolved(spec: GraphSpec) -> str:
    """The resolved document as YAML (what `validate --resolved` prints and a run directory keeps)."""
    return yaml.safe_dump(spec.doc, sort_keys=False, default_flow_style=None, width=110)
