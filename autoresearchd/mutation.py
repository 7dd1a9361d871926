"""Read and mutate a train.py's hyperparameter block (docs/architecture.md, contract 2); pure.

A hyperparameter is a top-level ``NAME = literal`` assignment with an UPPER_CASE name, where
the literal is an int, float, str, bool, a tuple of literals, a power ``2**k`` or a number with
a leading minus. A trailing ``# search: ...`` comment declares its space (``log LO..HI``,
``float LO..HI``, ``int LO..HI``, ``pow2 KLO..KHI``, ``choice A B ...``, ``fixed``), optionally
followed by ``device=cuda`` or ``device=cpu`` when the script reads the parameter on that kind
of device only (proposers elsewhere then leave it alone: see :func:`movable`); a
malformed one raises :class:`MutationError` with its line. Without one the space is inferred
from the value, and bounds are relative to it so that a trust check can judge a stranger's
values against the trusted baseline:

- a float ``v > 0`` moves multiplicatively on a log scale within ``[v/10, v*10]``; a float at
  most 1 is read as a fraction (ratio, decay, beta) and its upper bound is capped at 1.0;
- an int ``v >= 1`` steps by ±1 or ±2 units within ``[max(1, v//4), v*4]``. Below 16 a unit is
  1; above, it is the value's power-of-two alignment, capped at an eighth of its magnitude, so
  ``DEVICE_BATCH_SIZE = 128`` moves by 16s and keeps the divisibility batch sizes rely on;
- ``2**k`` steps ``k`` by ±1 within ``[max(0, k-3), k+3]`` and stays written as ``2**k``;
- zero, negative numbers, strings, tuples and bools stay fixed, as does anything whose name
  contains ``SEED`` (the seed comes from the environment). Zero is never scaled because no
  multiple of it is new; annotate it (``# search: float 0.0..0.2``) to search it.

Mutations rewrite only a literal's source span, so formatting and comments survive exactly,
and floats are written short (three significant digits when that stays in the space).
"""

from __future__ import annotations

import ast
import io
import math
import random
import re
import tokenize
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TypeGuard

from autoresearchd.errors import MutationError

SPACE_KINDS = ("log", "float", "int", "pow2", "choice", "fixed")
#: Device kinds an annotation may name after ``device=`` (those of ``models.Device.kind``).
DEVICE_KINDS = ("cuda", "cpu")
#: Largest exponent accepted in ``2**k``: bigger powers are never hyperparameters, and an
#: unbounded one would let a hostile script make the parser compute a gigantic integer.
MAX_EXPONENT = 62
INFERRED_FLOAT_RATIO = 10.0
INFERRED_INT_RATIO = 4
INFERRED_POW2_STEPS = 3
#: Multiplicative step of a log-scale move: a factor between 1.1 and 2, up or down.
LOG_STEP = (math.log(1.1), math.log(2.0))
#: Additive step of a linear float move, as a fraction of the space's width.
LINEAR_STEP = (0.05, 0.25)
SIGNIFICANT_DIGITS = 3
NEIGHBOUR_TRIES = 20

_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_ANNOTATION = re.compile(r"#\s*search:(?P<spec>.*)")
_DEVICE = re.compile(r"(?:^|\s)device=(?P<device>\S*)(?P<after>.*)$")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_RANGE_PARSERS: dict[str, Callable[[str], float]] = {
    "log": float,
    "float": float,
    "int": int,
    "pow2": int,
}
#: Which literal kind each range space applies to.
_RANGE_KINDS = {"log": "float", "float": "float", "int": "int", "pow2": "pow2"}

Value = object


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
            return any(_same(value, choice) for choice in self.choices)
        if self.low is None or self.high is None or not _is_number(value):
            return False
        if self.kind == "pow2":
            exponent = _exponent(value)
            return exponent is not None and self.low <= exponent <= self.high
        if self.kind == "int" and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def __str__(self) -> str:
        device = f" device={self.device}" if self.device else ""
        if self.kind in ("choice", "fixed"):
            return " ".join([self.kind, *(_text(choice) for choice in self.choices)]) + device
        suffix = "" if self.declared else " (inferred)"
        return f"{self.kind} {_text(self.low)}..{_text(self.high)}{device}{suffix}"


@dataclass(frozen=True, slots=True)
class Param:
    """One hyperparameter: its value, literal kind, space and exact source span.

    ``kind`` is the literal's form: ``int``, ``float``, ``str``, ``bool``, ``tuple`` or
    ``pow2`` (``value`` then holds ``2**k`` itself). Lines are 1-based, columns are
    character offsets on their line.
    """

    name: str
    value: Value
    kind: str
    space: Space
    line: int
    col: int
    end_line: int
    end_col: int
    source_text: str

    def movable_on(self, device: str = "") -> bool:
        """Whether a proposer on ``device`` (``cuda``, ``cpu``, empty: unknown) may change it."""
        return self.space.kind != "fixed" and self.space.applies_on(device)


def movable(params: Mapping[str, Param], device: str = "") -> dict[str, Param]:
    """The params a proposer on ``device`` may change, in source order.

    A parameter whose space names another device is treated as fixed: the script ignores it
    there, so a run that changes it only measures seed noise again.
    """
    return {name: param for name, param in params.items() if param.movable_on(device)}


@dataclass(frozen=True, slots=True)
class _Slot:
    """A hyperparameter found in the AST, before its space is known."""

    name: str
    kind: str
    value: Value
    node: ast.expr
    stmt: ast.Assign


def read_literal(node: ast.expr) -> tuple[str, Value] | None:
    """The ``(kind, value)`` of a hyperparameter literal, or None if ``node`` is anything else."""
    if isinstance(node, ast.Constant):
        return _constant(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _constant(node.operand.value) if isinstance(node.operand, ast.Constant) else None
        if inner and _is_number(inner[1]):
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


def _constant(value: object) -> tuple[str, Value] | None:
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
    if not (isinstance(base, ast.Constant) and _same(base.value, 2)):
        return None
    if isinstance(exponent, ast.Constant) and type(exponent.value) is int:
        return exponent.value if 0 <= exponent.value <= MAX_EXPONENT else None
    return None


def hyperparameter_name(stmt: ast.stmt) -> str | None:
    """The target name if ``stmt`` is shaped like a hyperparameter (``NAME = ...``)."""
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return None
    target = stmt.targets[0]
    if isinstance(target, ast.Name) and _NAME.fullmatch(target.id):
        return target.id
    return None


def parse_module(source: str) -> ast.Module:
    """``ast.parse`` that raises :class:`MutationError` with the line of a syntax error."""
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise MutationError(f"train.py does not parse: {exc.msg}", line=exc.lineno) from None
    except ValueError as exc:  # null bytes, oversized int literals
        raise MutationError(f"train.py does not parse: {exc}") from None
    except RecursionError:
        raise MutationError("train.py does not parse: nested too deeply") from None


def _slots(tree: ast.Module) -> dict[str, _Slot]:
    slots: dict[str, _Slot] = {}
    for stmt in tree.body:
        name = hyperparameter_name(stmt)
        found = read_literal(stmt.value) if name and isinstance(stmt, ast.Assign) else None
        if name is None or found is None or not isinstance(stmt, ast.Assign):
            continue
        if name in slots:
            first = slots[name].stmt.lineno
            raise MutationError(
                f"{name} is assigned twice (first on line {first})", line=stmt.lineno
            )
        slots[name] = _Slot(name, found[0], found[1], stmt.value, stmt)
    return slots


def parse_params(
    source: str, *, spaces_from: Mapping[str, Param] | None = None
) -> dict[str, Param]:
    """The hyperparameters of ``source`` in source order.

    With ``spaces_from`` (the params of a trusted baseline), annotations in ``source`` are
    ignored and each space is the baseline's, so a script cannot widen its own space by
    editing a comment; a name the baseline lacks is fixed.
    """
    tree = parse_module(source)
    slots = _slots(tree)
    lines = _lines(source)
    if spaces_from is None:
        spaces = _declared_spaces(source, tree, slots)
    else:
        spaces = {name: _baseline_space(slot, spaces_from) for name, slot in slots.items()}
    params: dict[str, Param] = {}
    for name, slot in slots.items():
        space = spaces.get(name) or _inferred_space(name, slot.kind, slot.value)
        params[name] = _param(slot, space, lines)
    return params


def _param(slot: _Slot, space: Space, lines: list[str]) -> Param:
    line, col, end_line, end_col = _span(slot.node, lines)
    text = _cut(lines, line, col, end_line, end_col)
    return Param(slot.name, slot.value, slot.kind, space, line, col, end_line, end_col, text)


def _baseline_space(slot: _Slot, baseline: Mapping[str, Param]) -> Space:
    trusted = baseline.get(slot.name)
    if trusted is None:
        return Space("fixed", choices=(slot.value,))
    if trusted.kind != slot.kind:
        kinds = kind_phrase(slot.kind), kind_phrase(trusted.kind)
        raise MutationError(
            f"{slot.name}: is {kinds[0]} literal, the baseline's is {kinds[1]}",
            line=slot.stmt.lineno,
        )
    return trusted.space


# --- annotations -------------------------------------------------------------------------


def _comments(source: str) -> dict[int, str]:
    """Comment text by line, read with ``tokenize`` so a ``#`` inside a string is not one."""
    comments: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(source, newline="").readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = token.string
    except (tokenize.TokenError, SyntaxError) as exc:
        raise MutationError(f"train.py does not tokenize: {exc}") from None
    return comments


def _declared_spaces(source: str, tree: ast.Module, slots: Mapping[str, _Slot]) -> dict[str, Space]:
    owners = _comment_owners(tree, slots)
    spaces: dict[str, Space] = {}
    for line, comment in _comments(source).items():
        match = _ANNOTATION.match(comment)
        if match is None:
            continue
        slot = owners.get(line)
        if slot is None:
            raise MutationError("search annotation is not on a hyperparameter line", line=line)
        spaces[slot.name] = _parse_annotation(slot, match["spec"].strip(), line)
    return spaces


def _comment_owners(tree: ast.Module, slots: Mapping[str, _Slot]) -> dict[int, _Slot]:
    """The hyperparameter a trailing comment belongs to, by the line the comment is on."""
    last_on_line: dict[int, ast.stmt] = {}
    for stmt in tree.body:
        last_on_line[stmt.end_lineno or stmt.lineno] = stmt
    owners: dict[int, _Slot] = {}
    for slot in slots.values():
        line = slot.stmt.end_lineno or slot.stmt.lineno
        if last_on_line[line] is slot.stmt:
            owners[line] = slot
    return owners


def _parse_annotation(slot: _Slot, spec: str, line: int) -> Space:
    body, device = _split_device(slot, spec, line)
    if device and not body:
        raise MutationError(
            f"{slot.name}: malformed search annotation {spec!r}: expected a space before it",
            line=line,
        )
    space = _parse_space(slot, body, line)
    return replace(space, device=device) if device else space


def _split_device(slot: _Slot, spec: str, line: int) -> tuple[str, str | None]:
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


def _parse_space(slot: _Slot, spec: str, line: int) -> Space:
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
        raise MutationError(f"{slot.name}: {_text(slot.value)} is outside {space}", line=line)
    return space


def _parse_range(slot: _Slot, kind: str, rest: str, line: int) -> Space:
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


def _parse_choices(slot: _Slot, rest: str, line: int) -> tuple[Value, ...]:
    try:
        choices = tuple(_choice_values(rest))
    except (tokenize.TokenError, SyntaxError, ValueError):
        choices = ()
    if not choices:
        text = f"choice {rest}"
        raise MutationError(f"{slot.name}: malformed search annotation {text!r}", line=line)
    for choice in choices:
        found = _constant(choice)
        if found is None or found[0] != slot.kind:
            raise MutationError(
                f"{slot.name}: choice {_text(choice)} is not {kind_phrase(slot.kind)} literal",
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


def _inferred_space(name: str, kind: str, value: Value) -> Space:
    if "SEED" in name:
        return Space("fixed", choices=(value,))
    if kind == "float" and isinstance(value, float) and value > 0:
        high = value * INFERRED_FLOAT_RATIO
        return Space("log", value / INFERRED_FLOAT_RATIO, min(high, 1.0) if value <= 1 else high)
    if kind == "int" and isinstance(value, int) and value >= 1:
        return Space("int", max(1, value // INFERRED_INT_RATIO), value * INFERRED_INT_RATIO)
    exponent = _exponent(value) if kind == "pow2" else None
    if exponent is not None:
        low = max(0, exponent - INFERRED_POW2_STEPS)
        return Space("pow2", low, min(MAX_EXPONENT, exponent + INFERRED_POW2_STEPS))
    return Space("fixed", choices=(value,))


# --- moves -------------------------------------------------------------------------------


def neighbour(param: Param, rng: random.Random) -> Value:
    """A nearby value in ``param``'s space, different from the current one when possible."""
    step = _STEPS[param.space.kind]
    for _ in range(NEIGHBOUR_TRIES):
        value = step(param, rng)
        if not _same(value, param.value):
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
    return {name: value for name, value in changes.items() if not _same(value, params[name].value)}


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
    exponent = _exponent(param.value) or 0
    return 2 ** int(_clamp(exponent + rng.choice((-1, 1)), math.ceil(low), math.floor(high)))


def _step_choice(param: Param, rng: random.Random) -> Value:
    others = [choice for choice in param.space.choices if not _same(choice, param.value)]
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
    slots = _slots(parse_module(source))
    lines = _lines(source)
    edits = []
    for name, value in changes.items():
        slot = slots.get(name)
        if slot is None:
            raise MutationError(f"{name} is not a hyperparameter of this train.py")
        edits.append(_edit(slot, value, lines))
    offsets = _line_offsets(lines)
    for (line, col, end_line, end_col), text in sorted(edits, reverse=True):
        start, end = offsets[line - 1] + col, offsets[end_line - 1] + end_col
        source = source[:start] + text + source[end:]
    return source


def _edit(slot: _Slot, value: Value, lines: list[str]) -> tuple[tuple[int, int, int, int], str]:
    text = literal_text(slot.kind, _checked(slot, value), _cut(lines, *_span(slot.node, lines)))
    if slot.kind == "pow2" and isinstance(slot.node, ast.BinOp):
        # Only the exponent is rewritten, so ``2 ** 19`` keeps its spacing.
        return _span(slot.node.right, lines), text.removeprefix("2**")
    return _span(slot.node, lines), text


def _checked(slot: _Slot, value: Value) -> Value:
    """``value`` coerced to the slot's literal kind, or a :class:`MutationError`."""
    if slot.kind == "float" and _is_number(value) and math.isfinite(value):
        return float(value)
    if slot.kind == "pow2" and _exponent(value) is not None:
        return value
    if slot.kind in ("int", "str", "bool", "tuple") and _kind_of(value) == slot.kind:
        return value
    raise MutationError(
        f"{slot.name}: expected {kind_phrase(slot.kind)} value, got {value!r}",
        line=slot.stmt.lineno,
    )


def literal_text(kind: str, value: Value, like: str = "") -> str:
    """Source text for ``value`` as a ``kind`` literal; strings keep ``like``'s quote style."""
    if kind == "float" and _is_number(value):
        return float_text(float(value))
    if kind == "pow2":
        return f"2**{_exponent(value)}"
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


# --- source positions --------------------------------------------------------------------


def _lines(source: str) -> list[str]:
    """Lines split exactly where Python's tokenizer splits them (``\\n``, ``\\r\\n``, ``\\r``)."""
    return _LINE.findall(source)


def _line_offsets(lines: list[str]) -> list[int]:
    offsets, total = [], 0
    for line in lines:
        offsets.append(total)
        total += len(line)
    return offsets


def _span(node: ast.AST, lines: list[str]) -> tuple[int, int, int, int]:
    """A node's (line, col, end_line, end_col) in characters (``ast`` counts UTF-8 bytes)."""
    line, end_line = node.lineno, node.end_lineno or node.lineno  # type: ignore[attr-defined]
    col = _char_col(lines[line - 1], node.col_offset)  # type: ignore[attr-defined]
    end_col = _char_col(lines[end_line - 1], node.end_col_offset)  # type: ignore[attr-defined]
    return line, col, end_line, end_col


def _char_col(line: str, byte_col: int) -> int:
    return len(line.encode("utf-8")[:byte_col].decode("utf-8"))


def _cut(lines: list[str], line: int, col: int, end_line: int, end_col: int) -> str:
    if line == end_line:
        return lines[line - 1][col:end_col]
    middle = lines[line : end_line - 1]
    return "".join([lines[line - 1][col:], *middle, lines[end_line - 1][:end_col]])


# --- values ------------------------------------------------------------------------------


def kind_phrase(kind: str) -> str:
    """``an int``, ``a float``: a literal kind with its article, for messages."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(param: Param) -> float:
    if not _is_number(param.value):
        raise MutationError(f"{param.name}: {param.value!r} is not a number", line=param.line)
    return float(param.value)


def _kind_of(value: object) -> str | None:
    """The literal kind ``value`` would be written as, or None if it cannot be one."""
    if isinstance(value, tuple):
        return "tuple" if all(_kind_of(item) for item in value) else None
    found = _constant(value)
    return found[0] if found else None


def _exponent(value: object) -> int | None:
    """``k`` when ``value == 2**k`` for ``0 <= k <= MAX_EXPONENT``."""
    if type(value) is not int or value < 1 or value & (value - 1):
        return None
    exponent = value.bit_length() - 1
    return exponent if exponent <= MAX_EXPONENT else None


def _same(a: object, b: object) -> bool:
    """Equality that tells ``True`` from ``1`` and ``1`` from ``1.0``, inside tuples too."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _text(value: object) -> str:
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value else repr(value)
    return repr(value)
