"""Safe `${...}` arithmetic over vars and numbers: + - * / // % ** ( ), unary minus, min/max/abs.

Parsed with ``ast`` and walked by hand: no ``eval``, no attribute access, no other calls.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from typing import Any

from .errors import did_you_mean

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCS = {"min": min, "max": max, "abs": abs}
PATTERN = re.compile(r"\$\{([^}]*)\}")


class ExprError(ValueError):
    """A `${...}` expression that cannot be evaluated; the message says why."""

    def __init__(self, message: str, hint: str | None = None, unknown_var: str | None = None, known: Any = None):
        super().__init__(message)
        self._hint = hint
        self._known = known  # the names an unknown var is compared with, only when the hint is asked for
        self.unknown_var = unknown_var  # the name, when the expression uses a var that is not defined (yet)

    @property
    def hint(self) -> str | None:
        """The fix; for an unknown var the nearest known names, looked up on first use (difflib is slow)."""
        if self._hint is None and self._known is not None:
            self._hint, self._known = did_you_mean(str(self.unknown_var), list(self._known)), None
        return self._hint


MAX_CHARS = 500  # an expression is a formula a person writes
MAX_TEXT = 10_000  # characters of a string after substitution
MAX_BITS = 1024  # integers beyond 2**1024 are no setting (and 10**10**10 would take hours)


def evaluate(expr: str, env: dict[str, Any]) -> float | int:
    """Value of one arithmetic expression over the names in ``env`` (bounded: size, depth, result)."""
    if len(expr) > MAX_CHARS:
        raise ExprError(f"expression longer than {MAX_CHARS} characters", "split it into vars")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        raise ExprError(f"cannot parse expression '${{{expr}}}'", "use numbers, vars and + - * / ** ( )") from None
    except (RecursionError, MemoryError):
        raise ExprError("expression nested too deeply", "split it into vars") from None
    try:
        result = _walk(tree.body, env, expr)
    except RecursionError:
        raise ExprError("expression nested too deeply", "split it into vars") from None
    return result


def _bounded(value: Any, expr: str) -> Any:
    """A real, finite number of bounded size, or ExprError."""
    if isinstance(value, complex):
        raise ExprError(f"'${{{expr}}}' is not a real number (a fractional power of a negative number?)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"'${{{expr}}}' is not a finite number")
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ExprError(f"number too large in '${{{expr}}}'", f"integers are below 2**{MAX_BITS}")
    return value


def _power(left: Any, right: Any, expr: str) -> Any:
    """left ** right, refused before computing when the result would be beyond MAX_BITS."""
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * math.log2(abs(left)) > MAX_BITS:
            raise ExprError(f"number too large in '${{{expr}}}'", f"integers are below 2**{MAX_BITS}")
    return left**right


def _walk(node: ast.AST, env: dict[str, Any], expr: str) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ExprError(f"unknown var {node.id!r} in '${{{expr}}}'", None, node.id, env)
        value = env[node.id]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExprError(f"var {node.id!r} is {value!r}, not a number, in '${{{expr}}}'")
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _walk(node.left, env, expr), _walk(node.right, env, expr)
        try:
            if isinstance(node.op, ast.Pow):
                return _bounded(_power(left, right, expr), expr)
            return _bounded(_BINOPS[type(node.op)](left, right), expr)
        except ZeroDivisionError:
            raise ExprError(f"division by zero in '${{{expr}}}'") from None
        except OverflowError:
            raise ExprError(f"number too large in '${{{expr}}}'") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, env, expr))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and node.args
        and not node.keywords
    ):
        name, count = node.func.id, len(node.args)
        if (name == "abs" and count != 1) or (name != "abs" and count < 2):
            wanted = "one number" if name == "abs" else "two or more numbers"
            raise ExprError(f"{name}() takes {wanted}, not {count}, in '${{{expr}}}'")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExprError(f"'${{{expr}}}' is not plain arithmetic", "no * unpacking in min, max, abs")
        return _FUNCS[name](*(_walk(a, env, expr) for a in node.args))
    raise ExprError(f"'${{{expr}}}' is not plain arithmetic", "only numbers, vars, + - * / // % ** ( ), min, max, abs")


def substitute(value: str, env: dict[str, Any]) -> Any:
    """A string with `${...}`: the number itself when the whole string is one expression, else text."""
    whole = PATTERN.fullmatch(value.strip())
    if whole and whole.group(1).strip() in env and not isinstance(env[whole.group(1).strip()], (int, float)):
        return env[whole.group(1).strip()]  # a bare string or boolean var: `space: ${mix_space}`
    if whole:
        result = evaluate(whole.group(1), env)
        return float(result) if isinstance(result, float) else result
    if "${" in value and not PATTERN.search(value):
        raise ExprError(f"unclosed '${{' in {value!r}", "close it with '}'")
    text = PATTERN.sub(
        lambda m: _format(_bare(m.group(1), env) if _is_bare(m.group(1), env) else evaluate(m.group(1), env)), value
    )
    if len(text) > MAX_TEXT:  # string vars that repeat each other grow exponentially
        raise ExprError(f"{value[:40]!r} expands to {len(text):,} characters", f"at most {MAX_TEXT:,}")
    return text


def _is_bare(text: str, env: dict[str, Any]) -> bool:
    return text.strip() in env and not isinstance(env[text.strip()], (int, float))


def _bare(text: str, env: dict[str, Any]) -> Any:
    return env[text.strip()]  # a string var inside text: "teacher.${feat}"


def _format(x: Any) -> str:
    return repr(x) if isinstance(x, float) else str(x)
