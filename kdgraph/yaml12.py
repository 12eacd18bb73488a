"""The YAML reader of graph files: YAML 1.2 numbers, merge keys, bounded size, depth and aliases.

    text = read_graph_text(path)                    # a regular UTF-8 file of at most 1 MiB (files.GRAPH)
    data, lines, problems = parse(text, str(path))  # lines: {("nodes", "s", "net"): 7, ...}
    value = parse_value("5e-4")                     # an override's value: 0.0005, a float

PyYAML reads YAML 1.1, where ``1e-3`` (no dot) is the string "1e-3", ``010`` is 8 (octal), ``1:30`` is 90
(base 60) and ``1_000`` is 1000; here numbers are YAML 1.2 core's: every float (``1e-3``, ``5e-4``, ``1e30``)
is a number, ints are decimal (``010`` is 10), ``0o17`` or ``0x1f``, and ``1:30`` or ``1_000`` are strings
(which the schema then refuses where a number is needed). An integer literal of more than MAX_INT_DIGITS
digits is refused here, with its line; every other number's range is the spec's (spec/numbers.py).
``<<: *base`` merges a mapping (explicit keys win). Aliases are expanded as copies, and the expanded
document is bounded (MAX_VALUES values, MAX_DEPTH levels), so an alias bomb or a self-referential alias is
one clear error, not MemoryError or RecursionError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, SpecError
from .files import GRAPH, read_text

MAX_VALUES = 100_000  # values in the document once aliases are expanded
MAX_DEPTH = 64  # nesting levels
MAX_INT_DIGITS = 30  # no setting has more digits; int() of 4,301 digits raises, of millions takes seconds

STR_TAG = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
MERGE_TAG = "tag:yaml.org,2002:merge"
FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")


class Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core's ints, floats (an exponent needs no dot) and booleans (only true and false)."""


BOOL_12 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
# YAML 1.1 reads yes/no/on/off as booleans (`train.cache: off` would be False, not the option "off"),
# 010 as 8, 1:30 as 90 and 1_000 as 1000: its bool, int and float forms are all replaced by 1.2's
_REPLACED = ("tag:yaml.org,2002:bool", INT_TAG, "tag:yaml.org,2002:float")
Loader.yaml_implicit_resolvers = {
    k: [(tag, regexp) for tag, regexp in v if tag not in _REPLACED]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool", BOOL_12, list("tTfF"))
Loader.add_implicit_resolver(INT_TAG, INT_12, list("-+0123456789"))  # before floats: FLOAT_12 matches 10 too
Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))
# YAML 1.1's other types are no values of a graph file (a set, bytes or a date reaches no setting and
# no JSON dump): YAML 1.2's core schema has no implicit timestamps, and these tags are refused at their line
Loader.yaml_implicit_resolvers = {
    k: [(tag, regexp) for tag, regexp in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in Loader.yaml_implicit_resolvers.items()
}


def _not_core(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"the tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not in YAML 1.2's core schema (use a list, a "
        "mapping or a quoted string)",
        node.start_mark,
    )


for _tag in ("set", "binary", "timestamp", "omap", "pairs"):
    Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _not_core)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 int: decimal (leading zeros are no octal), 0o octal, 0x hex; no `_`, no base 60."""
    text = str(loader.construct_scalar(node))
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    try:
        if body.startswith(("0o", "0x")) and text[0] not in "+-":
            return int(body[2:], 8 if body[1] == "o" else 16)
        return sign * int(body, 10)
    except ValueError:  # an explicit `!!int 1:30` or `!!int 1_000`
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not a YAML 1.2 integer (decimal, 0o octal or 0x hex)", node.start_mark
        ) from None


Loader.add_constructor(INT_TAG, _construct_int)


# ----------------------------------------------------------------------------- files


def read_graph_text(path: Path) -> str:
    """The text of a graph file; SpecError (one line, no contents) for anything that is not one."""
    return read_text(path, GRAPH)


# ----------------------------------------------------------------------------- parsing


_PARSED: dict[tuple[str, str], tuple[Any, dict[tuple, int], list[Problem]]] = {}
_KEEP, _KEEP_BYTES = 256, 64_000  # documents of up to 64 kB: `validate graphs/*.yaml` reads each teacher often


def parse(text: str, file: str) -> tuple[Any, dict[tuple, int], list[Problem]]:
    """The document, the line of every path in it, and its problems (duplicate or non-string keys).

    Raises SpecError for text that is not YAML or expands beyond the bounds. The same text of the same
    file is parsed once per process (the pure-Python parser costs ~10 ms a file); each call gets its own copy.
    """
    key = (file, text)
    if key not in _PARSED:
        if len(text) > _KEEP_BYTES:
            return _parse(text, file)
        if len(_PARSED) >= _KEEP:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = _parse(text, file)
    data, lines, problems = _PARSED[key]
    return unshare(data), dict(lines), list(problems)


def _parse(text: str, file: str) -> tuple[Any, dict[tuple, int], list[Problem]]:
    try:
        loader = Loader(text)
    except yaml.YAMLError as e:  # the reader refuses the text itself (a NUL byte)
        raise _yaml_error(e, file, text) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        walker = _Walker(file)
        walker.walk(node, (), 0, ())
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_error(e, file, text) from None
    except RecursionError:  # the composer recursed past Python's limit: the reader's position is the line
        line = loader.get_mark().line + 1
        raise SpecError(
            Problem("", f"YAML nested deeper than {MAX_DEPTH} levels", line, file, "flatten the structure")
        ) from None
    finally:
        loader.dispose()
    return unshare(data), walker.lines, walker.problems


def parse_value(text: str) -> Any:
    """One value written on the command line (``train.optimizer.lr=5e-4``), YAML 1.2 numbers included."""
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Walker("<command line>").walk(node, (), 0, ())
        return unshare(loader.construct_document(node))
    except RecursionError:  # nested past Python's limit before the walker could count the depth
        raise SpecError(Problem("", f"nested deeper than {MAX_DEPTH} levels", file="<command line>")) from None
    finally:
        loader.dispose()


def unshare(obj: Any) -> Any:
    """Aliases as copies: editing one place (an override) never changes another; non-name keys dropped
    (each is reported as a problem)."""
    if isinstance(obj, dict):
        return {k: unshare(v) for k, v in obj.items() if isinstance(k, str)}
    if isinstance(obj, list):
        return [unshare(v) for v in obj]
    return obj


def _yaml_error(e: yaml.YAMLError, file: str, text: str) -> SpecError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(e, yaml.reader.ReaderError):
        line = text[: e.position].count("\n") + 1
        what = f"character {e.character:#06x} is not allowed in YAML" if isinstance(e.character, int) else e.reason
    else:
        what = getattr(e, "problem", None) or str(e).split("\n")[0]
    return SpecError(Problem("", f"malformed YAML: {what}", line, file, "fix the YAML syntax"))


class _Walker:
    """Lines of each path; duplicate and non-string keys; the expanded size and depth, bounded."""

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[tuple, int] = {}
        self.problems: list[Problem] = []
        self.count = 0

    def _fail(self, node: yaml.Node, message: str, hint: str) -> SpecError:
        return SpecError(Problem("", message, node.start_mark.line + 1, self.file, hint))

    def walk(self, node: yaml.Node, path: tuple, depth: int, stack: tuple) -> None:
        self.count += 1
        if self.count > MAX_VALUES:
            raise self._fail(
                node, f"the document expands to more than {MAX_VALUES:,} values", "an alias bomb? use fewer aliases"
            )
        if depth > MAX_DEPTH:
            raise self._fail(node, f"nested deeper than {MAX_DEPTH} levels", "flatten the structure")
        if any(node is s for s in stack):
            raise self._fail(node, "an alias refers to the node that contains it", "a value cannot contain itself")
        self.lines[path] = node.start_mark.line + 1  # a value's own line (a block mapping: its first key)
        if isinstance(node, yaml.ScalarNode) and node.tag == INT_TAG and len(node.value) > MAX_INT_DIGITS:
            shown = f"{node.value[:12]}... ({len(node.value)} digits)"
            where = f"{_format(path)}: " if path else ""
            raise self._fail(node, f"{where}integer {shown} is out of range", "no setting takes a number this large")
        if isinstance(node, yaml.MappingNode):
            self._mapping(node, path, depth, (*stack, node))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i), depth + 1, (*stack, node))

    def _mapping(self, node: yaml.MappingNode, path: tuple, depth: int, stack: tuple) -> None:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != STR_TAG:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "a mapping or list"
                self.problems.append(
                    Problem(
                        _format(path),
                        f"key {shown} is not a name",
                        key_node.start_mark.line + 1,
                        self.file,
                        f"keys are names; quote it: '{shown}'" if isinstance(key_node, yaml.ScalarNode) else None,
                        "yaml",
                        path,
                    )
                )
                continue
            key = key_node.value
            if key in seen:
                self.problems.append(
                    Problem(
                        _format((*path, key)),
                        "duplicate key",
                        key_node.start_mark.line + 1,
                        self.file,
                        "each key may appear once per mapping",
                        "yaml",
                        (*path, key),
                    )
                )
            seen.add(key)
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            self.walk(value_node, (*path, key), depth + 1, stack)
        # merged keys, as the constructor expands them: only those the mapping does not set itself
        merged = self._merged(node, stack, 0)
        for key_node, value_node in reversed(merged):  # the last merged pair of a key wins, as in the constructor
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key_node.tag != STR_TAG or key in seen:
                continue
            seen.add(key)
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            self.walk(value_node, (*path, key), depth + 1, stack)

    def _merged(self, node: yaml.MappingNode, stack: tuple, level: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """The pairs ``node``'s merge keys bring in, merges of merges included, as PyYAML's flatten_mapping.

        Every pair counts toward MAX_VALUES each time it is merged (the constructor copies it each time),
        so a merge of a merge of a mapping that merges twice is bounded like an alias bomb.
        """
        out: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE_TAG:
                continue
            for source in reversed(_merge_sources(value_node)):  # of a list, the first source wins
                out += self._flat(source, (*stack, node), level + 1)
        return out

    def _flat(self, source: yaml.MappingNode, stack: tuple, level: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """A merged mapping's own pairs after the pairs its own merge keys bring in; counted."""
        if any(source is s for s in stack):
            raise self._fail(source, "a merge key refers to the mapping that contains it", "merge another mapping")
        if level > MAX_DEPTH:
            raise self._fail(source, f"merges nested deeper than {MAX_DEPTH} levels", "merge fewer levels")
        pairs = self._merged(source, stack, level) + [(k, v) for k, v in source.value if k.tag != MERGE_TAG]
        self.count += len(pairs)
        if self.count > MAX_VALUES:
            raise self._fail(
                source, f"the document expands to more than {MAX_VALUES:,} values", "an alias bomb? use fewer merges"
            )
        return pairs


def _merge_sources(node: yaml.Node) -> list[yaml.MappingNode]:
    if isinstance(node, yaml.MappingNode):
        return [node]
    if isinstance(node, yaml.SequenceNode):
        return [n for n in node.value if isinstance(n, yaml.MappingNode)]
    return []  # the constructor reports a merge of a scalar


def _format(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
