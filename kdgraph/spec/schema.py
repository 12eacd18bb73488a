"""The JSON Schema of a graph file (schemas/graph.schema.json), its violations as located problems."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import Problem, dedupe, did_you_mean
from .document import Locator, Path_

SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "schemas" / "graph.schema.json"


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _schema_errors(doc: Any) -> list[Any]:
    """The most specific schema errors: inside `anyOf`, those of the branch a mapping or list was meant for."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = [leaf for err in validator.iter_errors(doc) for leaf in _leaves(err)]
    return sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])


_RANGES = {"minimum": "at least", "exclusiveMinimum": "greater than", "maximum": "at most", "exclusiveMaximum": "below"}


def _range_leaves(err: Any) -> list[Any]:
    """The range errors inside an anyOf (a number out of range also fails the "${...}" branch)."""
    if err.validator in _RANGES:
        return [err]
    return [leaf for c in (err.context or []) for leaf in _range_leaves(c)]


def _leaves(err: Any) -> list[Any]:
    if err.validator == "anyOf" and _range_leaves(err):
        return _range_leaves(err)[:1]
    # {value: 1, warmpu: 5} as a weight fails "number", "string" and "schedule": only the last is news
    if err.validator == "anyOf" and isinstance(err.instance, (dict, list)):
        inner = [c for c in err.context if c.validator != "type"]
        if inner:
            return [leaf for c in inner for leaf in _leaves(c)]
    return [err]


def schema_problems(doc: Any, locator: Locator) -> list[Problem]:
    """Every JSON Schema violation of `doc`, located, with the fix where one is known."""
    return dedupe([p for err in _schema_errors(doc) for p in _schema_problem(err, tuple(err.absolute_path), locator)])


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
        missing = [k for k in err.validator_value if k not in err.instance]  # dedupe merges the repeats
        return [locator.problem(path, f"{key!r} is required", _REQUIRED_HINTS.get(key), "schema") for key in missing]
    if err.validator == "enum":
        allowed = ", ".join(repr(v) for v in err.validator_value)
        hint = did_you_mean(str(err.instance), [str(v) for v in err.validator_value])
        return [locator.problem(path, f"{err.instance!r} is not one of {allowed}", hint)]
    if err.validator in _RANGES:
        return [locator.problem(path, f"must be {_RANGES[err.validator]} {err.validator_value}, not {err.instance!r}")]
    if err.validator == "pattern" and path == ("name",):
        hint = "letters, digits, _, . and -, not starting with '.': it names the run directory"
        return [locator.problem(path, f"{err.instance!r} is not a valid name", hint)]
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
