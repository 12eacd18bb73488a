"""The type and range of each loss and op parameter, declared where the loss or op registers.

    @register_loss("kd", params={"T": real(gt=0, port=True), "reduction": choice("batchmean", "mean")})

A signature says which keys a graph file may set; these declarations say which values: a temperature
> 0, a probability in [0, 1], a count >= 1 and bounded. ``spec.checks`` checks every parameter a graph
gives against its declaration at validate time (after ``${...}`` substitution; a schedule at its
values' ends), so ``T: 0`` is one located error, not a NaN loss an hour into a run. The reference
(``kdgraph list --markdown``, docs/reference.md) lists the ranges beside the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_COUNT = 1 << 20  # channels, widths, negatives: beyond a million no setting is meant (memory would say so late)


@dataclass(frozen=True)
class Param:
    """One parameter's type ("real", "int", "flag", "choice", "text", "port", "reals", "ints") and range.

    schedule: a real that may be ``{value: v, warmup: n}`` etc. (an op's, where the op evaluates it;
    a loss's reals always may). port: may name a port instead, a learned value such as CTKD's
    temperature, which exists only at run time (the ops that make one declare ranges that keep it in
    range: t_min > 0, t_range > 0). null: ``null`` means "from the data or the inputs".
    """

    type: str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    schedule: bool = False
    port: bool = False
    null: bool = False

    def describe(self) -> str:
        """The range in words: ``a number > 0, or a port``, ``an integer in [1, 64]``, ``one of mean, sum``."""
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        what = {"real": "a number", "int": "an integer", "reals": "a list of numbers", "ints": "a list of integers"}
        what |= {"flag": "true or false", "text": "a name", "port": "a port"}
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        high = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None else None
        if low and high:
            bounds = f" in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        elif low or high:
            sign = {"(": ">", "[": "≥", ")": "<", "]": "≤"}[(low or high)[0]]
            bounds = f" {sign} {_num((low or high)[1])}"
        else:
            bounds = ""
        extras = [e for e, on in (("a schedule", self.schedule), ("null", self.null and self.type != "port")) if on]
        extras += ["a port"] if self.port and self.type != "port" else []
        return what[self.type] + bounds + "".join(f", or {e}" for e in extras)

    def problem(self, value: Any, schedules: bool = False) -> str | None:
        """Why `value` does not fit (a message), or None. `schedules`: a schedule is allowed here."""
        if value is None:
            return None if self.null else "must be set, not null"
        if self.type in ("reals", "ints"):
            if not isinstance(value, (list, tuple)) or not value:
                return f"expected a non-empty list, not {value!r}"
            item = Param(self.type[:-1], self.gt, self.ge, self.lt, self.le, schedule=self.schedule)
            for i, v in enumerate(value):
                if (bad := item.problem(v, schedules)) is not None:
                    return f"item {i}: {bad}"
            return None
        if isinstance(value, dict) and self.type == "real" and (self.schedule or schedules):
            ends = [value[k] for k in ("value",) if k in value] + list(value.get("cosine") or value.get("linear") or [])
            for v in ends:  # a malformed schedule is reported by the schedule check
                if _is_number(v) and (bad := self._range(v)) is not None:
                    return f"schedule value {bad}"
            if ("until" in value or "from" in value) and (bad := self._range(0.0)) is not None:
                # kdgraph/schedule.py: a windowed value is 0 outside its window (T = 0 divides by zero there)
                return f"{bad} outside the schedule's until/from window (a windowed schedule is 0 there)"
            return None
        if self.type == "port":
            return f"expected a port (node.port), not {value!r}"
        if self.type == "flag":
            return None if isinstance(value, bool) else f"expected true or false, not {value!r}"
        if self.type in ("text", "choice"):
            if not isinstance(value, str):
                return f"expected a string, not {value!r}"
            if self.type == "choice" and value not in self.choices:
                return f"{value!r} is not one of {', '.join(self.choices)}"
            return None
        if self.type == "int" and not (_is_number(value) and float(value).is_integer()):
            return f"expected an integer, not {value!r}"
        if not _is_number(value):
            return f"expected a number, not {value!r}"
        return self._range(value)

    def _range(self, v: float) -> str | None:
        if not math.isfinite(v):
            return f"must be a finite number, not {v!r}"
        for bound, ok, word in (
            (self.gt, lambda b: v > b, "greater than"),
            (self.ge, lambda b: v >= b, "at least"),
            (self.lt, lambda b: v < b, "below"),
            (self.le, lambda b: v <= b, "at most"),
        ):
            if bound is not None and not ok(bound):
                return f"must be {word} {_num(bound)}, not {v!r}"
        return None


def real(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    schedule: bool = False,
    port: bool = False,
    null: bool = False,
) -> Param:
    """A real number in a range; see Param for schedule, port and null."""
    return Param("real", gt, ge, lt, le, schedule=schedule, port=port, null=null)


def integer(*, ge: int = 1, le: int = MAX_COUNT, null: bool = False) -> Param:
    """A count: an integer, by default in [1, MAX_COUNT]."""
    return Param("int", ge=ge, le=le, null=null)


def reals(
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    schedule: bool = False,
    null: bool = False,
) -> Param:
    """A non-empty list of reals, each in the range."""
    return Param("reals", gt, ge, None, le, schedule=schedule, null=null)


def integers(*, ge: int = 1, le: int = MAX_COUNT, null: bool = False) -> Param:
    """A non-empty list of counts, each in [ge, le]."""
    return Param("ints", ge=ge, le=le, null=null)


def flag(*, null: bool = False) -> Param:
    return Param("flag", null=null)


def choice(*options: str) -> Param:
    return Param("choice", choices=options)


def port() -> Param:
    """A tensor that only a port gives (``margin: bn.margin``): checked at run time, where it exists."""
    return Param("port", port=True, null=True)


def text() -> Param:
    """A name (a node, a submodule path): the op itself checks that it exists."""
    return Param("text")


TEMPERATURE = real(gt=0, port=True)  # a loss's softmax(z / T): T > 0, or a learned one (a port)
PROBABILITY = real(ge=0, le=1)
WEIGHT = real(ge=0)  # a term's factor inside a loss
EPS = real(gt=0, le=1)  # a numerical guard


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)
