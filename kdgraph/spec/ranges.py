"""Range checks the JSON Schema cannot state: lr milestones strictly increase.

The schema holds every single number's range (minimum, exclusiveMinimum, ...); this module holds
the relations between numbers, checked once on the resolved document, at validate time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import Problem

if TYPE_CHECKING:
    from .document import Locator


def order_problems(doc: dict[str, Any], locator: Locator) -> list[Problem]:
    """Milestones of each lr schedule (train's and every stage's) strictly increase."""
    places: list[tuple[tuple, Any]] = [(("train",), doc.get("train"))]
    stages = doc.get("stages")
    places += [(("stages", i, "train"), s.get("train")) for i, s in enumerate(stages or []) if isinstance(s, dict)]
    problems = []
    for at, train in places:
        schedule = train.get("lr_schedule") if isinstance(train, dict) else None
        milestones = schedule.get("milestones") if isinstance(schedule, dict) else None
        if not isinstance(milestones, list) or not all(isinstance(m, int) for m in milestones):
            continue
        for i in range(1, len(milestones)):
            if milestones[i] <= milestones[i - 1]:
                path = (*at, "lr_schedule", "milestones", i)
                message = f"milestones must increase: {milestones[i]} comes after {milestones[i - 1]}"
                problems.append(locator.problem(path, message, "list the epochs in order, each once"))
                break
    return problems
