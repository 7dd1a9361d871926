"""Parse what a train.py reports: the ``---`` summary block or its JSON result file.

The output contract is karpathy/autoresearch's: after a line ``---`` come ``key: value``
lines. The last block wins, ``\\r`` progress redraws are split like newlines, and any
numeric key beyond ``val_bpb`` is kept as a metric. A JSON result file, when present,
takes precedence. This module is pure: callers hand it text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from autoresearchd.models import Summary

_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(\S+)\s*$")
_SEPARATOR = "---"


def split_lines(text: str) -> list[str]:
    """Split on ``\\n`` and on ``\\r`` so progress redraws become separate lines."""
    return re.split(r"\r\n|\r|\n", text)


def parse_summary_text(text: str) -> Summary | None:
    """The last ``---`` block of ``text``, or None when there is none."""
    return parse_summary_lines(split_lines(text))


def parse_summary_lines(lines: Iterable[str]) -> Summary | None:
    """Like :func:`parse_summary_text`, over lines already split (e.g. a log's tail)."""
    block: dict[str, float] | None = None
    for line in lines:
        if line.strip() == _SEPARATOR:
            block = {}
            continue
        if block is None:
            continue
        match = _LINE.match(line)
        if match:
            value = _number(match.group(2))
            if value is not None:
                block[match.group(1)] = value
    return None if block is None else _summary(block)


def parse_result_json(text: str) -> Summary | None:
    """A summary from the JSON result file, or None when it is not a JSON object."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return _summary({k: v for k, v in data.items() if _is_number(v)})


def _summary(values: Mapping[str, Any]) -> Summary:
    metrics = {key: float(value) for key, value in values.items() if key != "val_bpb"}
    val = values.get("val_bpb")
    return Summary(val_bpb=None if val is None else float(val), metrics=metrics)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    # NaN and inf are kept so the caller can report them as a crash, not a missing key.
    return value if math.isfinite(value) or text.lower().lstrip("+-") in ("nan", "inf") else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
