"""`vars:` and `${...}`: evaluate the vars (which may refer to each other), substitute them everywhere.

Linear in the number of vars: the names each var's ``${...}`` mention give a reference graph, walked
once in topological order, so each var is evaluated once, after the vars it uses. A cycle is named
(``a -> b -> a``); a var that uses a broken one is not reported again (its problem would be an echo).
"""

from __future__ import annotations

import re
from typing import Any

from .. import expr
from ..errors import Problem, did_you_mean
from .document import Locator, Path_

NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
MAX_HINTS = 20  # did-you-mean look-ups per graph: a file of 2,000 broken vars still answers at once


def _mentions(value: Any) -> set[str]:
    """Every identifier written inside the ``${...}`` of a string (vars and function names alike)."""
    if not isinstance(value, str) or "${" not in value:
        return set()
    return {name for body in expr.PATTERN.findall(value) for name in NAME.findall(body)}


def _order(uses: dict[str, list[str]]) -> tuple[list[str], list[list[str]]]:
    """The vars in an order where each comes after those it uses, and the cycles found (each as a path)."""
    order: list[str] = []
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    for root in uses:
        if root in state:
            continue
        state[root] = 1
        path, stack = [root], [iter(uses[root])]
        while stack:  # iterative depth-first: a chain of 2,000 vars needs no recursion
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                state[path[-1]] = 2
                order.append(path.pop())
            elif state.get(step) == 1:
                cycles.append(path[path.index(step) :] + [step])
            elif step not in state:
                state[step] = 1
                path.append(step)
                stack.append(iter(uses[step]))
    return order, cycles


def resolve_vars(doc: dict, locator: Locator) -> tuple[Any, list[Problem]]:
    """Evaluate `vars` (which may refer to each other) and substitute ${...} everywhere else."""
    problems: list[Problem] = []
    raw_vars = dict(doc.get("vars") or {})
    uses = {
        name: sorted(m for m in _mentions(value) if m in raw_vars and m != name) for name, value in raw_vars.items()
    }
    for name, value in raw_vars.items():
        if name in _mentions(value):
            uses[name].append(name)  # a var that uses itself: a cycle of one
    order, cycles = _order(uses)
    broken: set[str] = set()
    for cycle in cycles:
        shown = " -> ".join(cycle)
        for name in dict.fromkeys(cycle[:-1]):
            if name not in broken:
                problems.append(
                    locator.problem(("vars", name), f"vars refer to each other in a cycle: {shown}", "break the cycle")
                )
                broken.add(name)
    hints = [MAX_HINTS]
    env: dict[str, Any] = {}
    for name in order:
        value = raw_vars[name]
        if name in broken or any(u in broken for u in uses[name]):
            broken.add(name)  # it uses a broken var: its own problem would only repeat that one
            env[name] = value
        elif isinstance(value, str) and "${" in value:
            try:
                env[name] = expr.substitute(value, env)
            except expr.ExprError as e:
                problems.append(locator.problem(("vars", name), str(e), _hint(e, hints, raw_vars)))
                broken.add(name)
                env[name] = value
        else:
            env[name] = value
    env = {name: env[name] for name in raw_vars}  # the file's order

    def walk(obj: Any, path: Path_) -> Any:
        if isinstance(obj, dict):
            return {k: walk(v, (*path, k)) for k, v in obj.items()}
        if isinstance(obj, list):
            return [walk(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, str) and "${" in obj:
            try:
                return expr.substitute(obj, env)
            except expr.ExprError as e:
                if not _mentions(obj) & broken:  # else: an echo of the broken var's problem
                    problems.append(locator.problem(path, str(e), _hint(e, hints, env)))
                return obj
        return obj

    out = {k: (env if k == "vars" else walk(v, (k,))) for k, v in doc.items()}
    return out, problems


def _hint(error: expr.ExprError, left: list[int], known: dict[str, Any]) -> str | None:
    """The error's hint; for an unknown var the nearest of ``known``, looked up for the first MAX_HINTS only."""
    if error.unknown_var is None:
        return error.hint
    left[0] -= 1
    return did_you_mean(error.unknown_var, list(known)) if left[0] >= 0 else None
