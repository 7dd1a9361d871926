"""Mutating a train.py's hyperparameter block (docs/architecture.md, contract 2); pure.

A move draws a neighbouring value inside a parameter's space (:mod:`autoresearchd.spaces`):
log-scale floats by a factor between 1.1 and 2, linear floats by a share of the space's
width, ints by ±1 or ±2 units (:func:`int_unit`), ``2**k`` by one step of ``k``, choices
to another choice. Rewriting replaces only a literal's source span, so formatting and
comments survive exactly, and floats are written short (three significant digits when that
stays in the space). :func:`describe` writes the community's description of a change.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Callable, Mapping

from autoresearchd.errors import MutationError
from autoresearchd.hyperparams import (
    Param,
    Slot,
    cut,
    find_slots,
    line_offsets,
    movable,
    node_span,
    parse_module,
    source_lines,
)
from autoresearchd.literals import (
    Value,
    exponent_of,
    is_number,
    kind_of,
    kind_phrase,
    literal_text,
    same_value,
)

#: Multiplicative step of a log-scale move: a factor between 1.1 and 2, up or down.
LOG_STEP = (math.log(1.1), math.log(2.0))
#: Additive step of a linear float move, as a fraction of the space's width.
LINEAR_STEP = (0.05, 0.25)
SIGNIFICANT_DIGITS = 3
NEIGHBOUR_TRIES = 20


# --- moves -------------------------------------------------------------------------------


def neighbour(param: Param, rng: random.Random) -> Value:
    """A nearby value in ``param``'s space, different from the current one when possible."""
    step = _STEPS[param.space.kind]
    for _ in range(NEIGHBOUR_TRIES):
        value = step(param, rng)
        if not same_value(value, param.value):
            return value
    return param.value


def sample_changes(
    params: Mapping[str, Param], rng: random.Random, max_changes: int
) -> dict[str, Value]:
    """New values for 1..``max_changes`` randomly chosen non-fixed params (empty if none)."""
    free = list(movable(params).values())
    if not free or max_changes < 1:
        return {}
    chosen = rng.sample(free, rng.randint(1, min(max_changes, len(free))))
    changes = {param.name: neighbour(param, rng) for param in chosen}
    return {
        name: value for name, value in changes.items() if not same_value(value, params[name].value)
    }


def _bounds(param: Param) -> tuple[float, float]:
    low, high = param.space.low, param.space.high
    assert low is not None and high is not None  # range spaces always carry both
    return low, high


def _step_log(param: Param, rng: random.Random) -> Value:
    low, high = _bounds(param)
    current = _clamp(_number(param), low, high)
    factor = math.exp(rng.choice((-1, 1)) * rng.uniform(*LOG_STEP))
    return _round_within(_clamp(current * factor, low, high), low, high)


def _step_linear(param: Param, rng: random.Random) -> Value:
    low, high = _bounds(param)
    current = _clamp(_number(param), low, high)
    step = rng.choice((-1, 1)) * rng.uniform(*LINEAR_STEP) * (high - low)
    return _round_within(_clamp(current + step, low, high), low, high)


def _step_int(param: Param, rng: random.Random) -> Value:
    low, high = _bounds(param)
    current = round(_number(param))
    moved = current + rng.choice((-2, -1, 1, 2)) * int_unit(current)
    return int(_clamp(moved, math.ceil(low), math.floor(high)))


def _step_pow2(param: Param, rng: random.Random) -> Value:
    low, high = _bounds(param)
    exponent = exponent_of(param.value) or 0
    return 2 ** int(_clamp(exponent + rng.choice((-1, 1)), math.ceil(low), math.floor(high)))


def _step_choice(param: Param, rng: random.Random) -> Value:
    others = [choice for choice in param.space.choices if not same_value(choice, param.value)]
    return rng.choice(others) if others else param.value


def _step_fixed(param: Param, rng: random.Random) -> Value:
    return param.value


_STEPS: dict[str, Callable[[Param, random.Random], Value]] = {
    "log": _step_log,
    "float": _step_linear,
    "int": _step_int,
    "pow2": _step_pow2,
    "choice": _step_choice,
    "fixed": _step_fixed,
}


def int_unit(value: int) -> int:
    """The step of an int: 1 below 16, else its power-of-two alignment capped at value/8."""
    if value < 16:
        return 1
    return min(value & -value, 1 << (value.bit_length() - 4))


def _round_within(value: float, low: float, high: float) -> float:
    """``value`` with as few significant digits as keep it inside ``[low, high]`` (min 3)."""
    for digits in range(SIGNIFICANT_DIGITS, 18):
        rounded = float(f"{value:.{digits}g}")
        if low <= rounded <= high:
            return rounded
    return value


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# --- rewriting ---------------------------------------------------------------------------


def apply_changes(source: str, changes: Mapping[str, Value]) -> str:
    """``source`` with each named literal replaced; every other character is kept."""
    slots = find_slots(parse_module(source))
    lines = source_lines(source)
    edits = []
    for name, value in changes.items():
        slot = slots.get(name)
        if slot is None:
            raise MutationError(f"{name} is not a hyperparameter of this train.py")
        edits.append(_edit(slot, value, lines))
    offsets = line_offsets(lines)
    for (line, col, end_line, end_col), text in sorted(edits, reverse=True):
        start, end = offsets[line - 1] + col, offsets[end_line - 1] + end_col
        source = source[:start] + text + source[end:]
    return source


def _edit(slot: Slot, value: Value, lines: list[str]) -> tuple[tuple[int, int, int, int], str]:
    text = literal_text(slot.kind, _checked(slot, value), cut(lines, *node_span(slot.node, lines)))
    if slot.kind == "pow2" and isinstance(slot.node, ast.BinOp):
        # Only the exponent is rewritten, so ``2 ** 19`` keeps its spacing.
        return node_span(slot.node.right, lines), text.removeprefix("2**")
    return node_span(slot.node, lines), text


def _checked(slot: Slot, value: Value) -> Value:
    """``value`` coerced to the slot's literal kind, or a :class:`MutationError`."""
    if slot.kind == "float" and is_number(value) and math.isfinite(value):
        return float(value)
    if slot.kind == "pow2" and exponent_of(value) is not None:
        return value
    if slot.kind in ("int", "str", "bool", "tuple") and kind_of(value) == slot.kind:
        return value
    raise MutationError(
        f"{slot.name}: expected {kind_phrase(slot.kind)} value, got {value!r}",
        line=slot.stmt.lineno,
    )


def describe(params: Mapping[str, Param], changes: Mapping[str, Value]) -> str:
    """The community description: ``MATRIX_LR 0.04 → 0.05, DEPTH 8 → 9`` (source order)."""
    parts = []
    for name, param in params.items():
        if name in changes:
            old = param.source_text
            if param.kind == "pow2" or param.line != param.end_line:
                old = literal_text(param.kind, param.value, param.source_text)
            new = literal_text(param.kind, changes[name], param.source_text)
            parts.append(f"{name} {old} → {new}")
    return ", ".join(parts)


def _number(param: Param) -> float:
    if not is_number(param.value):
        raise MutationError(f"{param.name}: {param.value!r} is not a number", line=param.line)
    return float(param.value)
