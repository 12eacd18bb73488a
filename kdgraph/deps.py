"""Dependency graphs: `init: {from: GRAPH.yaml, node: NAME, overrides: [KEY=VALUE, ...]}`.

A node initialised from another graph file trains that graph first (or reuses its cached result,
keyed by the hash of its resolved spec, so a different override is a different cache entry). What
reaches the dependency is explicit and printed, in this order (later ones win):

1. the parent's command-line overrides of the data (``data.*``) and ``preset=``: a teacher is trained on
   the data it will teach (a smoke run's ``++data.subset=200`` trains a smoke teacher, and says so);
   nothing else of the command line is forwarded (``train.epochs=2`` shortens the parent only);
2. the caller's overrides for every dependency (``Trainer.init_overrides``);
3. the init's own ``overrides:`` (ESKD's shortened teacher schedule, KCD's teacher), in the strict
   command-line language: ``key=value`` needs the key to exist, ``+key=value`` adds, ``++`` adds or
   replaces, ``~key`` removes. An unknown key there is reported at its line in the parent file.

Its cache entry is ``<name>-<key>/`` (``entry_key``): the resolved spec's hash, the fingerprint of the
whole dataset it trains on (kdgraph/fingerprint.py: every file's size, mtime and inode, so another
project's ``./data`` is another entry), the files its own ``init: {checkpoint:}`` actions read, and the
keys of its own dependencies (a changed grandparent teacher is a new entry all the way down).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .catalog import plugin_records
from .errors import Problem, SpecError
from .fingerprint import dataset_fingerprint, digest, file_identity
from .spec import GraphSpec, Locator, apply_overrides, load_document, load_spec

# command-line overrides that reach every dependency (the data a teacher is trained on)
FORWARDED = ("data.", "preset=")


def forwarded(overrides: list[str]) -> list[str]:
    """The parent's command-line overrides that reach its dependencies: ``data.*`` and ``preset=``."""
    return [o for o in overrides if o.lstrip("+~").startswith(FORWARDED)]


@dataclass
class Passed:
    """One override passed to a dependency and where it comes from."""

    text: str
    origin: str  # "command line", "caller" or "init.overrides"


@dataclass
class Dependency:
    """A graph file to train first, with exactly what is passed to it."""

    rel: str  # as the parent file writes it
    path: Path
    passed: list[Passed] = field(default_factory=list)

    @property
    def overrides(self) -> list[str]:
        return [p.text for p in self.passed]

    def describe(self) -> str:
        """'teachers/resnet32x4.yaml with data.subset=200 (command line), train.epochs=50 (init.overrides)'."""
        if not self.passed:
            return self.rel
        return f"{self.rel} with " + ", ".join(f"{p.text} ({p.origin})" for p in self.passed)


def dependency_of(spec: GraphSpec, init: dict[str, Any], caller: list[str] | tuple[str, ...] = ()) -> Dependency:
    """What `init` (an init action with `from`) trains first, for a parent `spec`."""
    passed = [Passed(o, "command line") for o in forwarded(spec.overrides)]
    passed += [Passed(o, "caller") for o in caller]
    passed += [Passed(str(o), "init.overrides") for o in init.get("overrides") or []]
    return Dependency(str(init["from"]), spec.base_dir / str(init["from"]), passed)


def load_dependency(
    spec: GraphSpec, init: dict[str, Any], where: tuple, caller: list[str] | tuple[str, ...] = ()
) -> tuple[Dependency, GraphSpec]:
    """The dependency and its resolved spec; its problems are reported at the parent's init line."""
    dep = dependency_of(spec, init, caller)
    try:
        return dep, load_spec(dep.path, dep.overrides)
    except SpecError as e:
        head = spec.problem(where, f"graph {dep.describe()} is not valid")
        raise SpecError([head, *e.problems]) from None


def entry_key(spec: GraphSpec, caller: list[str] | tuple[str, ...] = (), _stack: tuple[Path, ...] = ()) -> str:
    """The cache key of a dependency's trained result: everything that decides what training it yields
    (its resolved spec, its whole dataset's fingerprint, its checkpoint files, its own dependencies' keys and
    the SHA-256 of each plugin file it imports)."""
    inits = []
    here = (spec.source.resolve(),) if spec.source else ()
    for path, init in _all_init_actions(spec):
        if "checkpoint" in init:
            where = (spec.base_dir / str(init["checkpoint"])).expanduser()
            inits.append([list(path), "checkpoint", file_identity(where)])
        elif "from" in init and (spec.base_dir / str(init["from"])).resolve() not in (*_stack, *here):
            _, child = load_dependency(spec, init, path, caller)
            inits.append([list(path), "from", entry_key(child, caller, (*_stack, *here))])
    # the plugin code it runs: an edited plugin file trains a new entry instead of meeting the old one's refusal
    plugins = sorted((r["name"], r.get("sha256") or "") for r in plugin_records(spec.doc.get("plugins"), spec.base_dir))
    facts = {"spec": spec.hash(), "data": dataset_fingerprint(spec.data, spec.base_dir), "inits": inits}
    if plugins:  # absent otherwise: the keys of graphs without plugins stay as they were
        facts["plugins"] = plugins
    return digest(facts)[:20]


def _all_init_actions(spec: GraphSpec) -> list[tuple[tuple, dict[str, Any]]]:
    """Every (yaml path, init) of a spec that is a dict (checkpoint, from, stage, ...)."""
    found = [(("nodes", n, "init"), node.init) for n, node in spec.nodes.items() if node.init]
    found += [(("stages", s.index, "init", n), init) for s in spec.stages for n, init in s.init.items()]
    return [(path, init) for path, init in found if isinstance(init, dict)]


def _init_actions(spec: GraphSpec) -> list[tuple[tuple, dict[str, Any]]]:
    """Every (yaml path, init) of a spec that trains another graph."""
    return [(path, init) for path, init in _all_init_actions(spec) if "from" in init]


def _override_problems(spec: GraphSpec, init: dict[str, Any], path: tuple) -> list[Problem]:
    """Each of the init's own overrides tried on the dependency's document, problems at their own line."""
    target = spec.base_dir / str(init["from"])
    problems: list[Problem] = []
    doc = load_document(target, problems, Locator(default_file=str(target)))
    if problems:
        return problems
    doc = copy.deepcopy(doc)
    out = []
    for i, text in enumerate(init.get("overrides") or []):
        for p in apply_overrides(doc, [str(text)], Locator(default_file=str(target))):
            out.append(spec.problem((*path, "overrides", i), f"{p.message} in {init['from']}", p.hint))
    return out


def dependency_problems(spec: GraphSpec, _stack: tuple[Path, ...] = ()) -> list[Problem]:
    """Problems of a spec's dependencies, checked before anything trains: unknown override keys at their
    line, an invalid dependency (with its overrides), and cycles of graph files (a.yaml -> b.yaml -> a.yaml)."""
    problems: list[Problem] = []
    here = (spec.source.resolve(),) if spec.source else ()
    for path, init in _init_actions(spec):
        target = (spec.base_dir / str(init["from"])).resolve()
        if not target.exists():
            continue  # the spec's own check reports a missing file
        chain = (*_stack, *here)
        if target in chain:
            cycle = " -> ".join(p.name for p in (*chain[chain.index(target) :], target))
            problems.append(spec.problem((*path, "from"), f"graphs depend on each other: {cycle}"))
            continue
        own = _override_problems(spec, init, path)
        if own:
            problems += own
            continue
        try:
            _, child = load_dependency(spec, init, path)
        except SpecError as e:
            problems += e.problems
            continue
        problems += dependency_problems(child, chain)
    return problems
