"""Composition: ``extends:`` merges parent graph files under a child, entry by entry.

    extends: [skd.yaml, dkd.yaml]        # relative to this file; parents may extend in turn

The rules, the same at every level:

* nodes, edges and stages are entries addressed by name. An edge's name is its ``name``, else
  ``loss:fromnode->tonode`` with ``#index`` on a repeated derived name, as ``kdgraph plan`` shows
  it. A child entry with an inherited name replaces it in place; a new one is appended.
* ``~name`` removes an inherited entry: a node key ``~student:``, an item ``"~kd:teacher->student"``
  in ``edges`` (or ``stages``, ``plugins``), a key ``~T:`` in ``vars``, ``data``, ``train`` or at the top.
* everything else (``vars``, ``data``, ``train``, top-level keys) merges key by key, the child winning.
* two parents defining the same entry or key differently is an error naming both files, unless the
  child settles it; ``title``, ``cite`` and ``notes`` describe one file and are inherited only where
  the parents agree.
* ``plugins`` is the union of all lists; relative paths (plugin files, ``init`` checkpoints and
  graphs, ``data.root``) are rewritten relative to the child, so they keep naming the same files.

Every merged entry keeps the (file, line) it was written at, so problems point into the parent.

The work is bounded: each file is read and resolved once per resolution (a diamond of 48 files costs
48 files, not 2**24 paths), the chain is at most MAX_EXTENDS_DEPTH files deep, at most MAX_EXTENDS_FILES
files take part, and their values together count toward yaml12.MAX_VALUES as one document's would.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..catalog import is_file_plugin
from ..errors import Problem, SpecError, did_you_mean
from ..yaml12 import MAX_VALUES
from .document import Locator, Path_, format_path, read_yaml
from .model import default_edge_name
from .schema import schema

ENTRY_SECTIONS = ("nodes", "edges", "stages", "plugins")
COSMETIC = ("title", "cite", "notes")
REMOVE = "~"

Origins = dict[Path_, tuple[str, "int | None"]]
MAX_EXTENDS_DEPTH = 64  # files in one chain of extends (a child, its parent, the parent's parent...)
MAX_EXTENDS_FILES = 256  # distinct files in one resolution
MAX_HINTS = 20  # did-you-mean look-ups for removals of what no parent defines


@dataclass
class Item:
    """One entry (a node, an edge...) or one leaf value (``train.optimizer.lr``) and where it was written."""

    value: Any
    where: Locator  # the defining file's lines
    src: Path_  # its path inside that file
    base_dir: Path  # that file's folder: relative paths inside the value start there
    replaces: frozenset = frozenset()  # idents of the inherited items it overrides (3-way merge of diamonds)
    removed: bool = False  # a tombstone: removed with ~ (kept while merging, dropped from the document)

    @property
    def ident(self) -> tuple:
        """Where it was written: the same for one definition reached through two parents."""
        return (_real(os.getcwd(), self.where.default_file), self.src)


@lru_cache(maxsize=1024)
def _real(cwd: str, file: str) -> str:
    return str((Path(cwd) / file).resolve())  # once per file, not once per entry compared


Items = dict[tuple, Item]  # key -> item, in document order; keys: ("nodes", name), ("train", "epochs")...


def resolve_extends(doc: dict, path: Path, locator: Locator, problems: list[Problem]) -> dict:
    """The child ``doc`` (read from ``path``) merged over its parents; ``locator`` is remapped to the merged doc."""
    path = Path(path)
    budget = _Budget(values=len(locator.origins))
    items = _resolve(doc, path, locator, problems, ((path.resolve(), str(path)),), budget)
    merged, origins = _assemble(items, path.parent, locator)
    locator.origins.clear()
    locator.origins.update(origins)
    return merged


# ----------------------------------------------------------------------------- resolving one file


@dataclass
class _Budget:
    """What one resolution has spent: each parent's items once (memo), files read, values seen."""

    values: int
    memo: dict[Path, Items] = field(default_factory=dict)

    def spend(self, where: Locator, at: Path_, values: int) -> None:
        """Count a parent file read; one clear error once the files or their values exceed the bounds."""
        self.values += values
        if len(self.memo) >= MAX_EXTENDS_FILES:
            raise SpecError(
                where.problem(
                    at, f"extends reaches more than {MAX_EXTENDS_FILES} graph files", "merge some parents into one file"
                )
            )
        if self.values > MAX_VALUES:
            raise SpecError(
                where.problem(
                    at, f"the extends chain expands to more than {MAX_VALUES:,} values", "extend fewer or smaller files"
                )
            )


def _resolve(
    doc: dict,
    path: Path,
    where: Locator,
    problems: list[Problem],
    chain: tuple[tuple[Path, str], ...],
    budget: _Budget,
) -> Items:
    """This file's items over the combination of its parents' (each resolved once, then reused)."""
    layers: list[Items] = []
    for ext_path, parent in _parent_paths(doc, path, where, problems):
        try:
            real, regular = parent.resolve(), parent.is_file()
        except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system, a symlink loop
            reason = getattr(e, "strerror", None) or str(e)
            problems.append(where.problem(ext_path, f"parent graph {str(parent)[:200]!r} cannot be read: {reason}"))
            continue
        seen = [r for r, _ in chain]
        if real in seen:
            cycle = " -> ".join([shown for _, shown in chain[seen.index(real) :]] + [str(parent)])
            problems.append(
                where.problem(ext_path, f"extends cycle: {cycle}", "a graph cannot extend itself, even through parents")
            )
            continue
        if real in budget.memo:  # a diamond: this parent was resolved through another path already
            layers.append(budget.memo[real])
            continue
        if len(chain) >= MAX_EXTENDS_DEPTH:
            raise SpecError(
                where.problem(
                    ext_path, f"extends chain deeper than {MAX_EXTENDS_DEPTH} files", "extend a flatter set of files"
                )
            )
        if not regular:
            what = "is a directory" if parent.is_dir() else ("is not a regular file" if parent.exists() else "")
            problems.append(where.problem(ext_path, f"parent graph {str(parent)!r} {what or 'does not exist'}"))
            continue
        parent_where = Locator(default_file=str(parent))
        found: list[Problem] = []
        parent_doc = read_yaml(parent, parent_where, found)
        budget.memo[real] = {}  # read: counted, and not read again even where it is no graph
        budget.spend(where, ext_path, len(parent_where.origins))
        is_graph = isinstance(parent_doc, dict) and ("kdgraph" in parent_doc or "extends" in parent_doc)
        problems += found if is_graph else []
        if not is_graph:
            # not a graph: say so without echoing a single key or value of someone else's file
            hint = "a parent is a graph file with kdgraph: 1 (or its own extends:)"
            problems.append(where.problem(ext_path, f"{str(parent)!r} is not a kdgraph graph file", hint))
            continue
        budget.memo[real] = _resolve(parent_doc, parent, parent_where, problems, (*chain, (real, str(parent))), budget)
        layers.append(budget.memo[real])
    base, pending = _combine(layers, path.parent)
    items = _overlay(base, pending, doc, where, path.parent, problems)
    for key, (a, b) in pending.items():
        file, line = where.where(("extends",))
        problems.append(
            Problem(
                format_path(key),
                _disagreement(a, b),
                line,
                file,
                f"set it in this file to choose, or remove it with ~{key[-1]}",
            )
        )
    return items


def _parent_paths(doc: dict, path: Path, where: Locator, problems: list[Problem]) -> list[tuple[Path_, Path]]:
    raw = doc.get("extends")
    if raw is None:
        return []
    if not (isinstance(raw, str) or (isinstance(raw, list) and all(isinstance(p, str) for p in raw))):
        problems.append(where.problem(("extends",), "extends takes a graph file or a list of them"))
        return []
    listed = [(("extends",), raw)] if isinstance(raw, str) else [(("extends", i), p) for i, p in enumerate(raw)]
    return [(at, Path(os.path.normpath(path.parent / p))) for at, p in listed]


def _at(item: Item) -> str:
    file, line = item.where.where(item.src)
    return f"{file}:{line}" if line is not None else file


def _label(key: tuple) -> str:
    if key[0] in ENTRY_SECTIONS and len(key) == 2:
        return f"{key[0][:-1] if key[0] != 'plugins' else 'plugin'} {key[1]!r}"
    return format_path(key)


# ----------------------------------------------------------------------------- a file's own items


Removal = tuple[tuple, Path_, str]  # (key removed, path of the marker, the marker as written)


def _own_items(
    doc: dict, where: Locator, base_dir: Path, problems: list[Problem]
) -> tuple[list[tuple[tuple, Item]], list[Removal]]:
    """(key, item) for everything this file writes, and a ``Removal`` for each ``~`` marker."""
    items: list[tuple[tuple, Item]] = []
    removals: list[Removal] = []

    def removal(key: tuple, at: Path_, value: Any = None) -> None:
        if value is not None:
            problems.append(where.problem(at, f"{at[-1]!r} removes {key[-1]!r} and takes no value", f"write {at[-1]}:"))
        removals.append((key, at, str(at[-1])))

    def leaves(value: dict, path: Path_) -> None:
        for k, v in value.items():
            if isinstance(k, str) and k.startswith(REMOVE):
                removal((*path, k[1:]), (*path, k), v)
            elif isinstance(v, dict) and v:
                leaves(v, (*path, k))
            elif v != {}:  # an empty mapping merges nothing
                items.append(((*path, k), Item(v, where, (*path, k), base_dir)))

    for section, value in doc.items():
        if section == "extends":
            continue
        if isinstance(section, str) and section.startswith(REMOVE):
            removal((section[1:],), (section,), value)
        elif section == "nodes" and isinstance(value, dict):
            for name, node in value.items():
                at = ("nodes", name)
                if isinstance(name, str) and name.startswith(REMOVE):
                    removal(("nodes", name[1:]), at, node)
                else:
                    items.append((at, Item(node, where, at, base_dir)))
        elif section in ("edges", "stages", "plugins") and isinstance(value, list):
            seen: set[str] = set()
            for j, entry in enumerate(value):
                at = (section, j)
                if isinstance(entry, str) and entry.startswith(REMOVE):
                    name = _plugin_key(entry[1:], base_dir) if section == "plugins" else entry[1:]
                    removals.append(((section, name), at, entry))
                    continue
                key = _entry_key(section, entry, j, seen, base_dir, where, problems)
                items.append(((section, key), Item(entry, where, at, base_dir)))
        elif isinstance(value, dict) and section not in ENTRY_SECTIONS:
            leaves(value, (section,))
        elif value != {}:
            # a top-level scalar, or a malformed section (kept whole: the schema reports it)
            items.append(((section,), Item(value, where, (section,), base_dir)))
    return items, removals


def _entry_key(
    section: str, entry: Any, j: int, seen: set[str], base_dir: Path, where: Locator, problems: list[Problem]
) -> str:
    """The name an entry has in its own file (edges: as spec.py derives it, #index on repeats)."""
    anonymous = f"<{where.default_file} {section}[{j}]>"  # unnamable: kept, the schema reports it
    if section == "plugins":
        return _plugin_key(entry, base_dir) if isinstance(entry, str) else anonymous
    if not isinstance(entry, dict):
        return anonymous
    explicit = entry.get("name")
    if section == "stages" or explicit:
        if not isinstance(explicit, str):
            return anonymous
        if explicit in seen:
            problems.append(where.problem((section, j, "name"), f"{section[:-1]} name {explicit!r} is used twice"))
            return anonymous
        seen.add(explicit)
        return explicit
    if not all(isinstance(entry.get(k), str) for k in ("loss", "from", "to")):
        return anonymous
    name = default_edge_name(entry["loss"], entry["from"], entry["to"])
    if name in seen:
        name = f"{name}#{j}"
    seen.add(name)
    return name


def _plugin_key(name: str, base_dir: Path) -> str:
    return str((base_dir / name).resolve()) if is_file_plugin(name) else name


# ----------------------------------------------------------------------------- merging


class _Indexed(dict):
    """A dict of path keys that also knows, per prefix, the keys under it: overlaps found without a scan.

    Merging n items would otherwise compare each with all the others (5,000 vars: 40 s).
    """

    def __init__(self, items: dict | None = None):
        super().__init__()
        self._under: dict[tuple, dict[tuple, None]] = {}
        for k, v in (items or {}).items():
            self[k] = v

    def __setitem__(self, key: tuple, value: Any) -> None:
        if key not in self:
            for n in range(1, len(key)):
                self._under.setdefault(key[:n], {})[key] = None
        super().__setitem__(key, value)

    def __delitem__(self, key: tuple) -> None:
        super().__delitem__(key)
        for n in range(1, len(key)):
            self._under[key[:n]].pop(key, None)

    def setdefault(self, key: tuple, value: Any = None) -> Any:
        if key not in self:
            self[key] = value
        return self[key]

    def under(self, key: tuple) -> list[tuple]:
        """The keys that lie strictly under ``key`` (all of them for the empty key)."""
        return list(self) if not key else list(self._under.get(key, ()))

    def at_or_under(self, key: tuple) -> list[tuple]:
        return ([key] if key in self else []) + self.under(key)


def _overlapping(items: _Indexed, key: tuple) -> list[tuple]:
    """Keys that are ``key``, lie under it, or hold it (a leaf where the other has a mapping)."""
    return [key[:n] for n in range(1, len(key)) if key[:n] in items] + items.at_or_under(key)


def _combine(layers: list[Items], child_dir: Path) -> tuple[Items, dict[tuple, tuple[Item, Item]]]:
    """Union of the parents; a key they define differently is pending until the child settles it.

    A definition overrides one it inherited: where mid_a.yaml changes a var of base.yaml and
    mid_b.yaml keeps it, a child of both gets mid_a's value (as a three-way merge would).
    """
    out: Items = _Indexed()
    pending: dict[tuple, tuple[Item, Item]] = _Indexed()
    dropped: set[tuple] = set()
    for layer in layers:
        for key, item in layer.items():
            if key in dropped:
                continue
            clash = _overlapping(out, key)
            if not clash:
                out[key] = item
            elif clash == [key] and _same(out[key], item, key, child_dir):
                continue  # the same definition (a shared grandparent, or an identical copy)
            elif all(out[k].ident in item.replaces for k in clash):
                for k in clash:
                    if k != key:
                        del out[k]
                out[key] = item  # it overrides what the other parent merely inherited (in place)
            elif any(item.ident in out[k].replaces for k in clash):
                continue  # the other parent overrides this inherited one
            elif len(key) == 1 and key[0] in COSMETIC:
                dropped.add(key)  # describes one file only: not inherited where parents disagree
                del out[key]
            else:
                first = min(clash, key=len)
                pending.setdefault(min(first, key, key=len), (out[first], item))
    return out, pending


def _same(a: Item, b: Item, key: tuple, child_dir: Path) -> bool:
    if a.removed or b.removed:
        return a.removed and b.removed
    if a.ident == b.ident:
        return True  # one definition reached through two parents (each file is read once)
    return _value_in(a, key, child_dir) == _value_in(b, key, child_dir)


def _disagreement(a: Item, b: Item) -> str:
    if a.removed or b.removed:
        gone, kept = (a, b) if a.removed else (b, a)
        return f"removed by {_at(gone)} but defined by {_at(kept)}"
    return f"defined differently by {_at(a)} and by {_at(b)}"


def _overlay(
    base: Items,
    pending: dict[tuple, tuple[Item, Item]],
    doc: dict,
    where: Locator,
    base_dir: Path,
    problems: list[Problem],
) -> Items:
    """The child's own items over ``base``: replace in place, append new, apply ``~`` removals."""
    own, removals = _own_items(doc, where, base_dir, problems)
    hints = MAX_HINTS
    out = _Indexed(base)

    def settle(key: tuple) -> frozenset:
        """Drop what ``key`` covers (pending conflicts too); the idents it overrides."""
        for k in pending.at_or_under(key):
            del pending[k]
        gone = [k for k in _overlapping(out, key) if k != key]
        replaced = [out[k] for k in gone + ([key] if key in out else [])]
        for k in gone:
            del out[k]
        return frozenset().union(*(r.replaces | {r.ident} for r in replaced))

    for key, at, marker in removals:
        if not any(not out[k].removed for k in out.at_or_under(key)):
            hints -= 1  # did-you-mean for the first MAX_HINTS only: each looks through every sibling
            known = sorted({str(k[len(key) - 1]) for k in out.under(key[:-1])}) if hints >= 0 else []
            problems.append(
                where.problem(
                    at, f"{marker!r} removes {_label(key)}, which no parent defines", did_you_mean(str(key[-1]), known)
                )
            )
        replaces = settle(key)
        out[key] = Item(None, where, at, base_dir, replaces, removed=True)
    for key, item in own:
        replaces = settle(key)
        out[key] = replace(item, replaces=replaces)  # an existing key keeps its place: a replaced edge stays put
    return out


# ----------------------------------------------------------------------------- relative paths


def _rebase(path: Any, src_dir: Path, dst_dir: Path) -> Any:
    """A path relative to ``src_dir``, rewritten relative to ``dst_dir`` (absolute, ~ and ${...} kept)."""
    if not isinstance(path, str) or not path or path.startswith(("~", "${")) or os.path.isabs(path):
        return path
    src, dst = os.path.abspath(src_dir), os.path.abspath(dst_dir)
    return path if src == dst else os.path.relpath(os.path.join(src, path), dst)


def _rebase_init(init: Any, src_dir: Path, dst_dir: Path) -> None:
    if isinstance(init, dict):
        for k in ("checkpoint", "from"):
            if k in init:
                init[k] = _rebase(init[k], src_dir, dst_dir)


def _value_in(item: Item, key: tuple, dst_dir: Path) -> Any:
    """The item's value with its relative paths rewritten for a file in ``dst_dir``."""
    value = copy.deepcopy(item.value)
    src_dir = item.base_dir
    if key == ("data", "root") or (key[0] == "plugins" and len(key) == 2 and is_file_plugin(str(value))):
        return _rebase(value, src_dir, dst_dir)
    if key[0] == "nodes" and len(key) == 2 and isinstance(value, dict):
        _rebase_init(value.get("init"), src_dir, dst_dir)
    if key[0] == "stages" and len(key) == 2 and isinstance(value, dict) and isinstance(value.get("init"), dict):
        for init in value["init"].values():
            _rebase_init(init, src_dir, dst_dir)
    return value


# ----------------------------------------------------------------------------- the merged document


def _assemble(items: Items, top_dir: Path, child: Locator) -> tuple[dict, Origins]:
    """The merged document and, for each of its paths, the (file, line) it came from."""
    doc: dict = {}
    origins: Origins = {}
    edge_names: set[str] = set()
    by_prefix: dict[int, dict] = {}  # per file's Locator: its origins by each prefix of their paths
    for key, item in items.items():
        if item.removed:
            continue
        value = _value_in(item, key, top_dir)
        section = key[0]
        if section in ("edges", "stages", "plugins") and len(key) == 2:
            entries = doc.setdefault(section, [])
            dst: Path_ = (section, len(entries))
            if section == "edges" and isinstance(value, dict):
                value = _keep_edge_name(value, key[1], len(entries), edge_names)
            entries.append(value)
        else:
            dst = key
            parent = doc
            for part in key[:-1]:
                parent = parent.setdefault(part, {})
            parent[key[-1]] = value
        _copy_origins(item, dst, origins, by_prefix)
        for n in range(1, len(dst)):  # the mappings on the way: the child's line where it has one
            prefix = dst[:n]
            if prefix not in origins:
                origins[prefix] = child.origins.get(prefix) or item.where.origins.get(prefix) or origins[dst]
    origins[()] = child.origins.get((), (child.default_file, 1))
    order = list(schema()["properties"])
    ranked = sorted(doc, key=lambda k: order.index(k) if k in order else len(order))
    return {k: doc[k] for k in ranked}, origins


def _keep_edge_name(edge: dict, key: str, index: int, names: set[str]) -> dict:
    """Give an edge an explicit name where its derived one would change at its new position."""
    if key.startswith("<"):
        return edge
    name = edge.get("name")
    if not name and all(isinstance(edge.get(k), str) for k in ("loss", "from", "to")):
        name = default_edge_name(edge["loss"], edge["from"], edge["to"])
        if name in names:
            name = f"{name}#{index}"
    if name != key:
        edge = {**edge, "name": key}
    names.add(key)
    return edge


def _copy_origins(item: Item, dst: Path_, origins: Origins, by_prefix: dict[int, dict]) -> None:
    n = len(item.src)
    for path, origin in _origins_under(item.where, by_prefix).get(item.src, ()):
        origins[dst + path[n:]] = origin
    if dst not in origins:
        origins[dst] = item.where.where(item.src)


def _origins_under(where: Locator, cache: dict[int, dict]) -> dict[Path_, list]:
    """A file's origins grouped under every prefix of their paths, built once per file (not once per item)."""
    if id(where) not in cache:
        grouped: dict[Path_, list] = {}
        for path, origin in where.origins.items():
            for n in range(len(path) + 1):
                grouped.setdefault(path[:n], []).append((path, origin))
        cache[id(where)] = grouped
    return cache[id(where)]
