"""User-facing errors: each carries every problem found, with its dotted YAML path and line.

Anything that derives from ``KDGraphError`` is printed by the CLI as plain lines (no traceback)
and ends the process with exit status 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# kinds of problem the planner finds (a well-formed graph that cannot run): they make a PlanError
PLAN_KINDS = frozenset({"cycle", "port", "plan", "dry_run"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph file, a checkpoint or a run, located as precisely as we can.

    A value, not just a message: ``kind`` says what sort of problem it is (``"schema"``, ``"name"``,
    ``"missing_file"``, ``"cycle"``, ``"port"``, ``"plan"``, ``"dry_run"``, ...) and ``where`` is the
    path as a tuple, so ``node``, ``edge`` and ``key`` are read from fields, never from the text.
    """

    path: str  # dotted path inside the graph file, e.g. "nodes.student.net" or "edges[2].to"
    message: str
    line: int | None = None
    file: str | None = None
    hint: str | None = None  # the fix, e.g. "did you mean 'resnet8x4'?"
    kind: str = "spec"
    where: tuple = ()  # the path as a tuple: ("nodes", "student", "net"), ("edges", 2, "to")

    @property
    def node(self) -> str | None:
        """The node the problem is about (``nodes.NAME...``), if any."""
        return str(self.where[1]) if len(self.where) > 1 and self.where[0] == "nodes" else None

    @property
    def edge(self) -> int | None:
        """The index of the edge the problem is about (``edges[i]...``), if any."""
        return self.where[1] if len(self.where) > 1 and self.where[0] == "edges" else None

    @property
    def key(self) -> str | None:
        """The last named key of the path (``net`` of ``nodes.student.net``), if any."""
        return next((str(k) for k in reversed(self.where) if isinstance(k, str)), None)

    def format(self) -> str:
        where = self.file or "<graph>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class KDGraphError(Exception):
    """Base of every error the CLI reports as clean lines with exit status 2."""

    exit_code = 2

    def lines(self) -> list[str]:
        return [str(self)]


class SpecError(KDGraphError):
    """All problems of a graph file at once.

    ``spec`` is the normalised GraphSpec when loading got that far despite the problems, so later
    phases (building nodes, checking ports) can still look for more problems to report together.
    """

    def __init__(self, problems: list[Problem] | Problem | str, spec: Any = None):
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        self.spec = spec
        super().__init__("\n".join(p.format() for p in self.problems))

    def lines(self) -> list[str]:
        return [p.format() for p in self.problems]


class PlanError(SpecError):
    """The graph is well-formed but cannot be planned (cycle, unreachable node, dead loss)."""


class NodeError(KDGraphError):
    """A node or a loss edge failed while running; names it (``node`` or ``edge``) and says what it received."""

    def __init__(
        self,
        what: str,
        message: str,
        hint: str | None = None,
        *,
        node: str | None = None,
        edge: str | None = None,
        key: str | None = None,
    ):
        self.what, self.message, self.hint = what, message, hint
        self.node, self.edge = node, edge
        self.key = key  # the key of the node or edge at fault (an edge's `from`, a parameter), when known
        super().__init__(f"{what}: {message}" + (f" ({hint})" if hint else ""))


class DataError(KDGraphError):
    """A dataset is missing or unreadable."""


class CheckpointError(KDGraphError):
    """A checkpoint is missing, corrupt or does not fit the graph."""


class RunError(KDGraphError):
    """A run cannot start or continue (existing run dir, NaN loss, failed write)."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...] | set[str], n: int = 3) -> str | None:
    """A hint naming the closest known names, or None when nothing is close."""
    import difflib

    by_lower: dict[str, list[str]] = {}
    for k in sorted(known):
        by_lower.setdefault(str(k).lower(), []).append(k)
    exact = by_lower.get(str(name).lower(), [])  # `ResNet8` -> 'resnet8': case first, then spelling
    near = difflib.get_close_matches(str(name).lower(), sorted(by_lower), n=n, cutoff=0.6)
    close = list(dict.fromkeys(exact + [k for low in near for k in by_lower[low]]))[:n]
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"


def dedupe(problems: list[Problem]) -> list[Problem]:
    """The problems without repeats (the same message at the same path)."""
    seen, out = set(), []
    for p in problems:
        key = (p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """Without duplicates; command-line problems first, then by file and line (stable otherwise)."""
    order = {f: i for i, f in enumerate(dict.fromkeys(p.file for p in problems))}
    return sorted(dedupe(problems), key=lambda p: (p.file != "<command line>", order[p.file], p.line if p.line else 0))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(e).strip().split("\n")[0]
    return text or type(e).__name__


def error_of(problems: list[Problem], spec: Any = None) -> SpecError:
    """The error for a list of problems: a PlanError when every one is the planner's finding."""
    plan_only = bool(problems) and all(p.kind in PLAN_KINDS for p in problems)
    return (PlanError if plan_only else SpecError)(problems, spec=spec)
