"""Decode JSON from the network into values both hub stores can hold, or say why not.

:func:`loads` is how the hub reads every JSON text it did not write itself: request
bodies and the records agents store as values (results, best metadata). Python's
:mod:`json` accepts more than the hub can use: nesting deep enough to exhaust the stack
(a ``RecursionError``, not a ``ValueError``), lone surrogates such as ``"\\ud800"`` (not
Unicode text, so neither SQLite nor PostgreSQL can encode them), NUL characters (which
PostgreSQL text cannot hold), and ``NaN``, ``Infinity`` and numbers beyond a double
(``1e999``), which a JSON reply cannot carry back (records may hold them: see
``allow_nan``). Each raises :class:`JsonRefused`, one line naming the problem and, for a
bad string, its place as a path like ``$.params.arguments.items[0].description``.
Nesting is capped at :data:`MAX_DEPTH` levels, far beyond any record the protocol has.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: The deepest nesting accepted; protocol records nest four levels at most.
MAX_DEPTH = 64
#: Characters no store can hold: lone surrogates (any surrogate, once decoded) and NUL.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: An escape that may decode to one of them (``\\ud7ff`` too, which only costs a walk);
#: one regex pass is faster than substring tests here.
ESCAPED = re.compile(r"\\u(?:[dD]|0000)")
#: Keys shown as they are in a path; others are shown escaped.
PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
_NESTED = (str, dict, list)


class JsonRefused(ValueError):
    """A JSON text the hub will not read; ``str()`` says why in one line."""


class _TooDeep(Exception):
    """Nesting past :data:`MAX_DEPTH`; its path would only be a long run of steps."""


class _Unstorable(Exception):
    """A bad value found while walking; ``path`` grows as the walk unwinds."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str | int] = []


def loads(data: bytes | str, *, allow_nan: bool = False) -> Any:
    """The value of ``data`` (UTF-8 bytes or text), or :class:`JsonRefused` saying why not.

    ``allow_nan`` reads ``NaN``, ``Infinity`` and out-of-range numbers as non-finite
    floats, as Python clients write them in records (a crash's metrics), instead of
    refusing them.
    """
    text = _text(data)
    try:
        value = _parse(text, _LENIENT if allow_nan else _STRICT)
    except RecursionError:
        raise JsonRefused(TOO_DEEP) from None
    except JsonRefused:
        raise
    except ValueError as exc:
        raise JsonRefused(f"invalid JSON: {exc}") from None
    strings = _may_hold_unstorable(data, text)
    if not strings and not _may_nest_too_deep(text):
        return value  # nothing left for the walk to find
    try:
        _walk(value, 0, strings)
    except _Unstorable as bad:
        raise JsonRefused(f"{bad.problem} at {_path(bad.path)}") from None
    except _TooDeep:
        raise JsonRefused(TOO_DEEP) from None
    return value


def _parse(text: str, decoder: json.JSONDecoder) -> Any:
    """``json.loads(text)`` with ``decoder``'s hooks, without building a decoder per call."""
    if text.startswith("\ufeff"):  # as json.loads refuses it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return decoder.decode(text)


def _text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"not UTF-8 text (byte {exc.start})") from None


def _may_hold_unstorable(data: bytes | str, text: str) -> bool:
    """Whether a string parsed from ``text`` could hold a surrogate or NUL; when not, the
    walk skips strings and costs little next to the parse.

    A NUL can only come from an escape (a raw one is not JSON), and so can a surrogate
    when the text was decoded from UTF-8 or is ASCII; other text holds a raw one exactly
    when it cannot be encoded (faster to try than to search for).
    """
    if isinstance(data, str) and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return ESCAPED.search(text) is not None


def _may_nest_too_deep(text: str) -> bool:
    """Whether ``text`` could nest past :data:`MAX_DEPTH`: each level opens with a bracket,
    so a text with no more brackets than that (strings' own counted too) cannot."""
    return text.count("[") + text.count("{") > MAX_DEPTH


def _no_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise JsonRefused(f"the number {literal[:40]} is out of range")
    return number


#: The decoders :func:`loads` uses, built once: refusing non-finite numbers, or reading them.
_STRICT = json.JSONDecoder(parse_float=_finite, parse_constant=_no_constant)
_LENIENT = json.JSONDecoder()


def _walk(value: Any, depth: int, strings: bool) -> None:
    """Refuse nesting past :data:`MAX_DEPTH` and, if ``strings``, unstorable keys and strings."""
    if type(value) is str:
        if strings:
            _check_text(value)
        return
    if type(value) is not dict and type(value) is not list:
        return
    if depth >= MAX_DEPTH:
        raise _TooDeep
    pairs = value.items() if type(value) is dict else enumerate(value)
    for key, item in pairs:
        try:
            if strings and type(key) is str:
                _check_text(key)
            if type(item) in _NESTED:
                _walk(item, depth + 1, strings)
        except _Unstorable as bad:
            bad.path.append(key)
            raise


def _check_text(text: str) -> None:
    found = UNSTORABLE.search(text)
    if found is None:
        return
    char = found.group()
    if char == "\x00":
        raise _Unstorable("a NUL character \\u0000 (PostgreSQL text cannot hold it)")
    raise _Unstorable(f"a lone surrogate \\u{ord(char):04x} (not Unicode text)")


def _path(parts: list[str | int]) -> str:
    """``$`` then each step outermost first (the walk collected them innermost first)."""
    return "$" + "".join(_step(part) for part in reversed(parts))


def _step(part: str | int) -> str:
    # A key may hold the very character refused, so odd keys are shown escaped.
    if isinstance(part, str) and PLAIN_KEY.fullmatch(part):
        return f".{part}"
    return f"[{ascii(part[:40]) if isinstance(part, str) else part}]"
