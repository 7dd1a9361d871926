"""Hyperparameter literals (docs/architecture.md, contract 2): reading, comparing, writing; pure.

A literal is an int, float, str, bool, a tuple of literals, a power ``2**k`` or a number with
a leading minus. This module reads one from its ``ast`` node, compares two values the way
every proposer must (:func:`same_value`: ``True`` is not ``1``, ``1`` is not ``1.0``), and
writes a value back as short source text.
"""

from __future__ import annotations

import ast
import math
from typing import TypeGuard

#: Largest exponent accepted in ``2**k``: bigger powers are never hyperparameters, and an
#: unbounded one would let a hostile script make the parser compute a gigantic integer.
MAX_EXPONENT = 62

Value = object


def read_literal(node: ast.expr) -> tuple[str, Value] | None:
    """The ``(kind, value)`` of a hyperparameter literal, or None if ``node`` is anything else."""
    if isinstance(node, ast.Constant):
        return constant_kind(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = (
            constant_kind(node.operand.value) if isinstance(node.operand, ast.Constant) else None
        )
        if inner and is_number(inner[1]):
            return inner[0], -inner[1]
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        exponent = _pow2_exponent(node)
        return None if exponent is None else ("pow2", 2**exponent)
    if isinstance(node, ast.Tuple):
        items = [read_literal(item) for item in node.elts]
        if all(item is not None for item in items):
            return "tuple", tuple(item[1] for item in items if item is not None)
    return None


def constant_kind(value: object) -> tuple[str, Value] | None:
    """``(kind, value)`` for a scalar literal value, or None if it cannot be one."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return ("float", value) if math.isfinite(value) else None
    if isinstance(value, str):
        return "str", value
    return None


def _pow2_exponent(node: ast.BinOp) -> int | None:
    base, exponent = node.left, node.right
    if not (isinstance(base, ast.Constant) and same_value(base.value, 2)):
        return None
    if isinstance(exponent, ast.Constant) and type(exponent.value) is int:
        return exponent.value if 0 <= exponent.value <= MAX_EXPONENT else None
    return None


# --- values ------------------------------------------------------------------------------


def same_value(a: object, b: object) -> bool:
    """Equality that tells ``True`` from ``1`` and ``1`` from ``1.0``, inside tuples too.

    Whether a proposed value is a change, and whether a value is one of a space's choices,
    are both asked this way, so a literal of another kind never passes for the same one.
    """
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def kind_of(value: object) -> str | None:
    """The literal kind ``value`` would be written as, or None if it cannot be one."""
    if isinstance(value, tuple):
        return "tuple" if all(kind_of(item) for item in value) else None
    found = constant_kind(value)
    return found[0] if found else None


def exponent_of(value: object) -> int | None:
    """``k`` when ``value == 2**k`` for ``0 <= k <= MAX_EXPONENT``."""
    if type(value) is not int or value < 1 or value & (value - 1):
        return None
    exponent = value.bit_length() - 1
    return exponent if exponent <= MAX_EXPONENT else None


def kind_phrase(kind: str) -> str:
    """``an int``, ``a float``: a literal kind with its article, for messages."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


# --- writing -----------------------------------------------------------------------------


def literal_text(kind: str, value: Value, like: str = "") -> str:
    """Source text for ``value`` as a ``kind`` literal; strings keep ``like``'s quote style."""
    if kind == "float" and is_number(value):
        return float_text(float(value))
    if kind == "pow2":
        return f"2**{exponent_of(value)}"
    if kind == "str" and isinstance(value, str) and like.startswith('"'):
        if value.isprintable() and '"' not in value and "\\" not in value:
            return f'"{value}"'
    return repr(value)


def float_text(value: float) -> str:
    """Short float text: ``0.05``, ``3e-5``, ``1e16``, never ``3e-05`` or ``5``."""
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def value_text(value: object) -> str:
    """A value as messages and space descriptions show it (floats short, strings quoted)."""
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value else repr(value)
    return repr(value)
