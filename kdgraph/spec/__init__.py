"""Graph files: YAML with line numbers, overrides, JSON Schema, vars, meaning checks -> GraphSpec.

    spec = load_spec("graphs/kd.yaml", overrides=["train.epochs=2"])

Every problem found is collected and raised together as one ``SpecError`` whose lines name the
file, the YAML line, the dotted path and, for unknown names, the nearest known ones.

``load_spec`` is the pipeline; its parts are the modules of this package, and it is their only caller:

    document   YAML with lines, the Locator, overrides      compose   ``extends:``
    schema     JSON Schema problems                         vars      ``vars:`` and ``${...}``
    model      GraphSpec and the other dataclasses          checks    names, parameters, ports, inits
    dataflow   the value graph: order, cycles, what a set of ports needs
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..catalog import gated, load_graph_plugins
from ..errors import Problem, SpecError, dedupe, error_of, sort_problems
from ..views import normalisation_problems, view_problems
from .checks import registry_problems
from .compose import resolve_extends
from .dataflow import cycle_problems
from .defaults import DATA_DEFAULTS, TRAIN_DEFAULTS
from .document import Locator, Path_, apply_overrides, dump_resolved, format_path, merge, parse_override_key, read_yaml
from .init_deps import from_cycle_problems
from .model import (
    DATA_PORTS,
    EDGE_KEYS,
    ENGINE_ARGS,
    NODE_KEYS,
    PORT_RE,
    EdgeSpec,
    GraphSpec,
    NodeSpec,
    StageSpec,
    default_edge_name,
    normalise,
)
from .numbers import number_problems
from .ranges import order_problems
from .schema import SCHEMA_PATH, prune_unknown_keys, schema, schema_problems
from .vars import resolve_vars

__all__ = [
    "DATA_DEFAULTS",
    "DATA_PORTS",
    "EDGE_KEYS",
    "ENGINE_ARGS",
    "NODE_KEYS",
    "PORT_RE",
    "SCHEMA_PATH",
    "TRAIN_DEFAULTS",
    "EdgeSpec",
    "GraphSpec",
    "Locator",
    "NodeSpec",
    "Path_",
    "Problem",
    "StageSpec",
    "apply_overrides",
    "dedupe",
    "default_edge_name",
    "dump_resolved",
    "format_path",
    "load_document",
    "load_spec",
    "merge",
    "parse_override_key",
    "read_yaml",
    "registry_problems",
    "schema",
    "sort_problems",
]


def load_document(path: str | Path, problems: list[Problem], locator: Locator) -> dict:
    """The raw mapping of a graph file (with `extends` merged)."""
    path = Path(path)
    doc = read_yaml(path, locator, problems)
    if not isinstance(doc, dict):
        raise SpecError(
            problems + [Problem("", "a graph file must be a mapping (kdgraph: 1, name:, nodes:, ...)", 1, str(path))]
        )
    if doc.get("extends"):
        doc = resolve_extends(doc, path, locator, problems)
    return doc


def load_spec(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    document: dict | None = None,
    check_registry: bool = True,
    import_plugins: bool = True,
) -> GraphSpec:
    """Load, override, validate and normalise a graph file; raise one SpecError with every problem.

    The graph file's ``plugins:`` are imported because the caller named the file. A ``document`` handed
    in (read from a run folder or an export) imports its plugins only inside ``catalog.admitted(...)``,
    where the user named them again (kdgraph/plugin_trust.py); ``import_plugins=False`` reads the
    file as data only (a run's identity is checked before any of its code runs).

    The phases (YAML, overrides, JSON Schema, vars, names, ports, cycles) go on as far as the file
    allows, so one report lists the problems of all of them. When the spec could be normalised the
    SpecError carries it, for the builder to look for more (see ``check.check_graph``).
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
    if doc.get("plugins") and path is not None and import_plugins and (document is None or gated()):
        problems += load_graph_plugins(doc["plugins"], Path(path).parent, locator)
    numbers = number_problems(doc, locator)  # NaN passes every schema range: refused first, alone
    if numbers:
        raise SpecError(sort_problems(problems + numbers))
    schema_errors = schema_problems(doc, locator)
    problems += schema_errors
    if schema_errors and not prune_unknown_keys(doc):
        raise SpecError(sort_problems(problems))
    doc, var_problems = resolve_vars(doc, locator)
    problems += var_problems
    if not var_problems:  # values that came from ${...} have their types checked now
        typed = number_problems(doc, locator) or schema_problems(doc, locator) + order_problems(doc, locator)
        if typed:
            raise SpecError(sort_problems(problems + typed))
    try:
        spec = normalise(doc, Path(path) if path else None, locator, overrides, problems)
        problems += view_problems(spec.data, spec.problem) + normalisation_problems(spec.data, spec.problem)
        if check_registry:
            problems += registry_problems(spec)
            problems += from_cycle_problems(spec, lambda p: load_document(p, [], Locator(default_file=str(p))))
        cycles = cycle_problems(spec)
        problems += cycles
    except (TypeError, ValueError, KeyError, AttributeError):
        if problems:  # an unresolved ${...} or a set-aside key broke what follows: report what we know
            raise SpecError(sort_problems(problems)) from None
        raise
    if problems:
        raise error_of(sort_problems(problems), spec=spec if not var_problems else None)  # a loop alone: PlanError
    return spec
