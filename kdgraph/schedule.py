"""Values that change with the epoch: loss weights, loss parameters and op parameters.

A schedule is written in the graph file as one of (epochs count from 1, as in the reference code):

* ``0.9``                               constant
* ``{value: v, warmup: n}``             v * min(epoch / n, 1)            (DKD's 20-epoch loss warm-up)
* ``{value: v, until: n}``              v while epoch <= n, then 0       (ESKD: KD dropped after epoch n)
* ``{value: v, from: n}``               0 before epoch n, v from n on
* ``{cosine: [a, b], epochs: n}``       a + (b - a) * (1 - cos(pi * min(epoch, n) / n)) / 2
* ``{linear: [a, b], epochs: n}``       a + (b - a) * min(epoch, n) / n

``warmup``, ``until`` and ``from`` may be combined on one ``value``; each factor applies on its own
(``{value: 8, warmup: 20, until: 200}``). CTKD's gradient-reversal factor
lambda(epoch) = (cos(i*pi/10) + 1)/2 - 1, i = min(epoch, 10), is ``{cosine: [0, -1], epochs: 10}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

VALUE_KEYS = ("value", "warmup", "until", "from")
CURVE_KEYS = ("cosine", "linear")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _epoch_count(spec: Mapping, key: str, minimum: int) -> int:
    n = spec[key]
    if not (_is_number(n) and float(n).is_integer() and n >= minimum):
        raise ValueError(f"'{key}' must be an integer >= {minimum} (an epoch count), not {n!r}")
    return int(n)


@dataclass(frozen=True)
class Schedule:
    """A number that depends on the epoch; ``at(epoch)`` gives its value (epochs count from 1)."""

    value: float = 0.0
    warmup: int | None = None  # ramp v * min(epoch / warmup, 1)
    until: int | None = None  # 0 after this epoch
    start: int | None = None  # 0 before this epoch (the graph file's 'from')
    curve: str | None = None  # "cosine" or "linear" between ends[0] and ends[1] over `epochs`
    ends: tuple[float, float] = (0.0, 0.0)
    epochs: int = 1

    def at(self, epoch: int) -> float:
        if self.curve is not None:
            progress = min(max(epoch, 0), self.epochs) / self.epochs
            shape = (1.0 - math.cos(math.pi * progress)) / 2.0 if self.curve == "cosine" else progress
            a, b = self.ends
            return a + (b - a) * shape
        v = self.value
        if self.warmup is not None:
            v *= min(epoch / self.warmup, 1.0)
        if self.until is not None and epoch > self.until:
            return 0.0
        if self.start is not None and epoch < self.start:
            return 0.0
        return v

    __call__ = at

    @property
    def is_constant(self) -> bool:
        return self.curve is None and self.warmup is None and self.until is None and self.start is None

    @classmethod
    def constant(cls, value: float) -> Schedule:
        return cls(value=float(value))

    @classmethod
    def from_spec(cls, spec: Any) -> Schedule:
        """Build a schedule from a number or a mapping of the graph file; ValueError says what is wrong."""
        if isinstance(spec, Schedule):
            return spec
        if _is_number(spec):
            return cls.constant(spec)
        if not isinstance(spec, Mapping):
            raise ValueError(f"a schedule is a number or a mapping, not {type(spec).__name__} {spec!r}")
        keys = set(spec)
        curves = [k for k in CURVE_KEYS if k in keys]
        if curves:
            if len(curves) > 1:
                raise ValueError("give one of 'cosine' and 'linear', not both")
            curve = curves[0]
            extra = keys - {curve, "epochs"}
            if extra:
                raise ValueError(f"unexpected key(s) {sorted(extra)} in a {curve} schedule; "
                                 f"write {{{curve}: [start, end], epochs: n}}")
            if "epochs" not in keys:
                raise ValueError(f"a {curve} schedule needs 'epochs': {{{curve}: [start, end], epochs: n}}")
            ends = spec[curve]
            if not (isinstance(ends, (list, tuple)) and len(ends) == 2 and all(_is_number(e) for e in ends)):
                raise ValueError(f"'{curve}' must be two numbers [start, end], not {ends!r}")
            return cls(curve=curve, ends=(float(ends[0]), float(ends[1])), epochs=_epoch_count(spec, "epochs", 1))
        if "value" in keys:
            extra = keys - set(VALUE_KEYS)
            if extra:
                raise ValueError(f"unexpected key(s) {sorted(extra)} in a schedule; "
                                 f"with 'value' use any of 'warmup', 'until', 'from'")
            if not _is_number(spec["value"]):
                raise ValueError(f"'value' must be a number, not {spec['value']!r}")
            return cls(
                value=float(spec["value"]),
                warmup=_epoch_count(spec, "warmup", 1) if "warmup" in keys else None,
                until=_epoch_count(spec, "until", 0) if "until" in keys else None,
                start=_epoch_count(spec, "from", 0) if "from" in keys else None,
            )
        raise ValueError(
            f"unrecognised schedule {dict(spec)!r}; write a number, {{value: v, warmup|until|from: n}}, "
            "{cosine: [a, b], epochs: n} or {linear: [a, b], epochs: n}"
        )

    def to_spec(self) -> float | dict[str, Any]:
        """The graph-file form of this schedule (inverse of ``from_spec``)."""
        if self.curve is not None:
            return {self.curve: list(self.ends), "epochs": self.epochs}
        if self.is_constant:
            return self.value
        out: dict[str, Any] = {"value": self.value}
        for key, v in (("warmup", self.warmup), ("until", self.until), ("from", self.start)):
            if v is not None:
                out[key] = v
        return out


def is_schedule_spec(obj: Any) -> bool:
    """True for a Schedule or a mapping that looks like a schedule (it may still be malformed)."""
    if isinstance(obj, Schedule):
        return True
    return isinstance(obj, Mapping) and bool(set(obj) & {"value", *CURVE_KEYS})


def value_at(x: Any, epoch: int) -> Any:
    """``x.at(epoch)`` for a Schedule, ``x`` itself otherwise (numbers, tensors)."""
    return x.at(epoch) if isinstance(x, Schedule) else x
