"""Search spaces of hyperparameters (docs/architecture.md, contract 2): declared or inferred; pure.

A trailing ``# search: ...`` comment declares a space (``log LO..HI``, ``float LO..HI``,
``int LO..HI``, ``pow2 KLO..KHI``, ``choice A B ...``, ``fixed``), optionally followed by
``device=cuda`` or ``device=cpu`` when the script reads the parameter on that kind of device
only (proposers then leave it alone elsewhere); a malformed one raises
:class:`MutationError` with its line. Without one the space is inferred from the value, and
bounds are relative to it so that a trust check can judge a stranger's values against the
trusted baseline:

- a float ``v > 0`` moves multiplicatively on a log scale within ``[v/10, v*10]``; a float at
  most 1 is read as a fraction (ratio, decay, beta) and its upper bound is capped at 1.0;
- an int ``v >= 1`` steps by ±1 or ±2 units within ``[max(1, v//4), v*4]`` (the unit is in
  :func:`autoresearchd.mutation.int_unit`);
- ``2**k`` steps ``k`` by ±1 within ``[max(0, k-3), k+3]`` and stays written as ``2**k``;
- zero, negative numbers, strings, tuples and bools stay fixed, as does anything whose name
  contains ``SEED`` (the seed comes from the environment). Zero is never scaled because no
  multiple of it is new; annotate it (``# search: float 0.0..0.2``) to search it.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from autoresearchd.errors import MutationError
from autoresearchd.literals import (
    MAX_EXPONENT,
    Value,
    constant_kind,
    exponent_of,
    is_number,
    kind_phrase,
    same_value,
    value_text,
)

SPACE_KINDS = ("log", "float", "int", "pow2", "choice", "fixed")
#: Device kinds an annotation may name after ``device=`` (those of ``models.Device.kind``).
DEVICE_KINDS = ("cuda", "cpu")
INFERRED_FLOAT_RATIO = 10.0
INFERRED_INT_RATIO = 4
INFERRED_POW2_STEPS = 3

_DEVICE = re.compile(r"(?:^|\s)device=(?P<device>\S*)(?P<after>.*)$")
_RANGE_PARSERS: dict[str, Callable[[str], float]] = {
    "log": float,
    "float": float,
    "int": int,
    "pow2": int,
}
#: Which literal kind each range space applies to.
_RANGE_KINDS = {"log": "float", "float": "float", "int": "int", "pow2": "pow2"}


@dataclass(frozen=True, slots=True)
class Space:
    """Where a hyperparameter may move; ``fixed`` keeps its one value in ``choices``.

    ``device`` names the only kind of device whose runs read the parameter (None: every one).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Value, ...] = ()
    declared: bool = False
    device: str | None = None

    def applies_on(self, device: str) -> bool:
        """Whether a run on ``device`` reads the parameter; an empty ``device`` is unknown."""
        return not device or self.device is None or self.device == device

    def contains(self, value: Value) -> bool:
        """Whether ``value`` lies in the space (same Python type for choices, no bool-as-int)."""
        if self.kind in ("choice", "fixed"):
            return any(same_value(value, choice) for choice in self.choices)
        if self.low is None or self.high is None or not is_number(value):
            return False
        if self.kind == "pow2":
            exponent = exponent_of(value)
            return exponent is not None and self.low <= exponent <= self.high
        if self.kind == "int" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def __str__(self) -> str:
        device = f" device={self.device}" if self.device else ""
        if self.kind in ("choice", "fixed"):
            return " ".join([self.kind, *(value_text(choice) for choice in self.choices)]) + device
        suffix = "" if self.declared else " (inferred)"
        return f"{self.kind} {value_text(self.low)}..{value_text(self.high)}{device}{suffix}"


class Assignment(Protocol):
    """A hyperparameter as the block parser found it, before its space is known."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def value(self) -> Value: ...


# --- annotations -------------------------------------------------------------------------


def parse_annotation(slot: Assignment, spec: str, line: int) -> Space:
    """The space ``spec`` (the text after ``# search:``) declares for ``slot``, on ``line``."""
    body, device = _split_device(slot, spec, line)
    if device and not body:
        raise MutationError(
            f"{slot.name}: malformed search annotation {spec!r}: expected a space before it",
            line=line,
        )
    space = _parse_space(slot, body, line)
    return replace(space, device=device) if device else space


def _split_device(slot: Assignment, spec: str, line: int) -> tuple[str, str | None]:
    """The annotation without its trailing ``device=KIND`` qualifier, and that kind."""
    match = _DEVICE.search(spec)
    if match is None:
        return spec, None
    if match["device"] not in DEVICE_KINDS or match["after"].strip():
        raise MutationError(
            f"{slot.name}: malformed search annotation {spec!r}: "
            f"expected device={' or device='.join(DEVICE_KINDS)} at its end",
            line=line,
        )
    return spec[: match.start()].strip(), match["device"]


def _parse_space(slot: Assignment, spec: str, line: int) -> Space:
    kind, _, rest = spec.partition(" ")
    rest = rest.strip()
    if kind == "fixed" and not rest:
        space = Space("fixed", choices=(slot.value,), declared=True)
    elif kind == "choice":
        space = Space("choice", choices=_parse_choices(slot, rest, line), declared=True)
    elif kind in _RANGE_PARSERS:
        space = _parse_range(slot, kind, rest, line)
    else:
        raise MutationError(f"{slot.name}: malformed search annotation {spec!r}", line=line)
    if not space.contains(slot.value):
        raise MutationError(f"{slot.name}: {value_text(slot.value)} is outside {space}", line=line)
    return space


def _parse_range(slot: Assignment, kind: str, rest: str, line: int) -> Space:
    def fail(why: str) -> MutationError:
        text = f"{kind} {rest}"
        return MutationError(f"{slot.name}: malformed search annotation {text!r}: {why}", line=line)

    if slot.kind != _RANGE_KINDS[kind]:
        raise fail(
            f"applies to {kind_phrase(_RANGE_KINDS[kind])} literal, not {kind_phrase(slot.kind)}"
        )
    parts = rest.split("..")
    if len(parts) != 2:
        raise fail("expected LOW..HIGH")
    try:
        low, high = (_RANGE_PARSERS[kind](part.strip()) for part in parts)
    except ValueError:
        raise fail("bounds are not numbers of the right type") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise fail("expected finite bounds with LOW < HIGH")
    if kind == "log" and low <= 0:
        raise fail("a log range needs LOW > 0")
    if kind == "pow2" and not (0 <= low and high <= MAX_EXPONENT):
        raise fail(f"exponents must lie in 0..{MAX_EXPONENT}")
    return Space(kind, low, high, declared=True)


def _parse_choices(slot: Assignment, rest: str, line: int) -> tuple[Value, ...]:
    try:
        choices = tuple(_choice_values(rest))
    except (tokenize.TokenError, SyntaxError, ValueError):
        choices = ()
    if not choices:
        text = f"choice {rest}"
        raise MutationError(f"{slot.name}: malformed search annotation {text!r}", line=line)
    for choice in choices:
        found = constant_kind(choice)
        if found is None or found[0] != slot.kind:
            raise MutationError(
                f"{slot.name}: choice {value_text(choice)} is not {kind_phrase(slot.kind)} literal",
                line=line,
            )
    return choices


def _choice_values(text: str) -> Iterator[Value]:
    """Literals separated by spaces: strings, numbers (maybe negative), True, False."""
    sign = ""
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            continue
        if token.type == tokenize.OP and token.string == "-" and not sign:
            sign = "-"
            continue
        allowed = token.type in (tokenize.STRING, tokenize.NUMBER) or token.string in (
            "True",
            "False",
        )
        if not allowed or (sign and token.type != tokenize.NUMBER):
            raise ValueError(token.string)
        yield ast.literal_eval(sign + token.string)
        sign = ""
    if sign:
        raise ValueError(sign)


# --- inference ---------------------------------------------------------------------------


def inferred_space(name: str, kind: str, value: Value) -> Space:
    """The space of a hyperparameter without an annotation, relative to its value."""
    if "SEED" in name:
        return Space("fixed", choices=(value,))
    if kind == "float" and isinstance(value, float) and value > 0:
        high = value * INFERRED_FLOAT_RATIO
        return Space("log", value / INFERRED_FLOAT_RATIO, min(high, 1.0) if value <= 1 else high)
    if kind == "int" and isinstance(value, int) and value >= 1:
        return Space("int", max(1, value // INFERRED_INT_RATIO), value * INFERRED_INT_RATIO)
    exponent = exponent_of(value) if kind == "pow2" else None
    if exponent is not None:
        low = max(0, exponent - INFERRED_POW2_STEPS)
        return Space("pow2", low, min(MAX_EXPONENT, exponent + INFERRED_POW2_STEPS))
    return Space("fixed", choices=(value,))
