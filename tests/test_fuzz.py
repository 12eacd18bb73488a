"""Fuzzing the loader and the planner: a mutated graph file is accepted or refused with a KDGraphError.

Valid graphs (every file under graphs/ and the valid base of the corpus) are mutated the way people
get them wrong: keys deleted or misspelt, values of the wrong type, names misspelt, stray override
strings, characters dropped from the text. Loading, building (on the meta device: constructors run,
no memory is spent on weights) and planning must then either succeed or raise a ``KDGraphError``
(SpecError, PlanError, ...): never a KeyError, a TypeError or a traceback of any other kind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdgraph.check import check_graph
from kdgraph.errors import KDGraphError

from ._fuzz import value_paths

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for p in (REPO / "graphs").rglob("*.yaml") if p.parent.name != "presets") + [
    REPO / "tests" / "bad_graphs" / "32_override_unknown_key.yaml"
]
NAMES = ["student.logits", "teacher.feat2", "data.label", "data.image", "cnn", "mlp", "kd", "ce", "mse", "mix"]
ODD_TEXT = ["${", "${x}", "${1/0}", "${alpha * 2}", "}", "~", "+", "=", ".", "[0]", "nodes..x", "-1"]


def _parent(doc: Any, path: tuple) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _misspell(text: str, data: st.DataObject) -> str:
    if not text:
        return "x"
    i = data.draw(st.integers(0, len(text) - 1))
    how = data.draw(st.sampled_from(["drop", "double", "swap", "case"]))
    if how == "drop":
        return text[:i] + text[i + 1 :]
    if how == "double":
        return text[:i] + text[i] + text[i:]
    if how == "swap" and i + 1 < len(text):
        return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
    return text[:i] + text[i].swapcase() + text[i + 1 :]


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 16),  # small: a swapped-in width or depth must not build a giant network
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=10),
    st.sampled_from(NAMES + ODD_TEXT),
    st.lists(st.integers(-1, 8), max_size=3),
    st.dictionaries(st.sampled_from(["value", "warmup", "net", "op", "in", "x"]), st.integers(-1, 4), max_size=2),
)


def mutate(doc: dict, data: st.DataObject) -> None:
    """One change of the kind a person makes: delete, retype, misspell a value or a key, add a key."""
    paths = value_paths(doc)
    if not paths:
        return
    path = data.draw(st.sampled_from(paths))
    parent, last = _parent(doc, path), path[-1]
    kind = data.draw(st.sampled_from(["delete", "retype", "misspell_value", "misspell_key", "add_key"]))
    if kind == "delete":
        del parent[last]
    elif kind == "retype":
        parent[last] = data.draw(values)
    elif kind == "misspell_value" and isinstance(parent[last], str):
        parent[last] = _misspell(parent[last], data)
    elif kind == "misspell_key" and isinstance(parent, dict):
        parent[_misspell(str(last), data)] = parent.pop(last)
    elif kind == "add_key" and isinstance(parent[last], dict):
        parent[last][data.draw(st.sampled_from(["name", "in", "frozen", "weight", "T", "epochs", "zzz"]))] = data.draw(
            values
        )


def override_strings(doc: dict, data: st.DataObject) -> list[str]:
    """Command-line overrides, some well-formed, some not."""
    out = []
    for _ in range(data.draw(st.integers(0, 3))):
        if data.draw(st.booleans()):
            out.append(data.draw(st.text(max_size=16)))
            continue
        path = data.draw(st.sampled_from(value_paths(doc) or [("name",)]))
        key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
        if data.draw(st.booleans()):
            key = _misspell(key, data)
        prefix = data.draw(st.sampled_from(["", "", "+", "~", "++"]))
        value = yaml.safe_dump(data.draw(values), default_flow_style=True).strip().removesuffix("...").strip()
        out.append(f"{prefix}{key}" if prefix == "~" else f"{prefix}{key}={value}")
    return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of graphs/ (so paths inside the files resolve) and of the corpus' valid base."""
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "graphs", folder / "graphs")
    shutil.copy(SOURCES[-1], folder / SOURCES[-1].name)
    return folder


def _target(workspace: Path, source: Path) -> Path:
    inside = source.relative_to(REPO / "graphs") if source.is_relative_to(REPO / "graphs") else None
    return (workspace / "graphs" / inside if inside else workspace / source.name).with_name("_fuzzed.yaml")


@pytest.mark.slow
def test_sources_are_valid(workspace: Path) -> None:
    """The fuzzer starts from files that load and plan."""
    assert len(SOURCES) >= 3
    with torch.device("meta"):
        for source in SOURCES:
            check_graph(source, dry=False)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_mutated_graphs_load_or_fail_cleanly(workspace: Path, data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(SOURCES), label="source")
    doc = yaml.safe_load(source.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        mutate(doc, data)
    overrides = override_strings(doc, data) if data.draw(st.booleans()) else []
    text = yaml.safe_dump(doc, sort_keys=False)
    if data.draw(st.integers(0, 4)) == 0:  # now and then, damage the text itself
        i = data.draw(st.integers(0, max(len(text) - 1, 0)))
        text = text[:i] + data.draw(st.sampled_from(["", ":", "{", "- ", "\t", "'", "  ", "\n  "])) + text[i + 2 :]
    path = _target(workspace, source)
    path.write_text(text)
    data.draw(st.just((text, overrides)), label="file and overrides")
    try:
        with torch.device("meta"):
            check_graph(path, overrides, dry=False)
    except KDGraphError as e:
        assert e.lines() and all(isinstance(line, str) and line for line in e.lines())
