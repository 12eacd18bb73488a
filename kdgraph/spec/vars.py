"""`vars:` and `${...}`: evaluate the vars (which may refer to each other), substitute them everywhere."""

from __future__ import annotations

import re
from typing import Any

from .. import expr
from ..errors import Problem
from .document import Locator, Path_


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
                    if e.unknown_var is not None and any(
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
    broken = {str(p.where[1]) for p in problems}  # the vars that failed

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
