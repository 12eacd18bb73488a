"""Every number of a graph document is finite and of bounded size, wherever it stands.

The JSON Schema's ranges cannot refuse NaN (every comparison with NaN is false, so ``lr: .nan`` passes
``minimum: 0``) and bound no integer's size; this walker does both, once over the document as read
(its own numbers, presets', extends' and overrides', with their lines) and once after ``${...}``
substitution, so no setting, var or table entry holds NaN, ±inf or an integer beyond 2**53.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import Problem

if TYPE_CHECKING:
    from .document import Locator, Path_

MAX_INT = 2**53  # beyond this no count is meant, and a float (JSON, torch) no longer holds it exactly


def number_problem(value: Any) -> tuple[str, str] | None:
    """(message, hint) when `value` is a number no setting may hold; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {_yaml(value)}", "NaN and infinity are no setting: write a number"
    if isinstance(value, int) and abs(value) > MAX_INT:
        return f"{value} is out of range", "integers here are at most 2**53 in size"
    return None


def number_problems(doc: Any, locator: Locator) -> list[Problem]:
    """A located problem for each NaN, ±inf or oversized integer anywhere in `doc`."""
    problems: list[Problem] = []
    stack: list[tuple[Path_, Any]] = [((), doc)]
    while stack:  # iterative: the document's depth is bounded by the reader, not by this walk
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += [((*path, k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [((*path, i), v) for i, v in enumerate(value)]
        elif (bad := number_problem(value)) is not None:
            problems.append(locator.problem(path, *bad))
    return problems


def _yaml(value: float) -> str:
    """NaN and infinity as a graph file writes them."""
    return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
