"""Progress lines: what a training script prints while it trains, read as (loss, fraction).

Two formats count: karpathy/autoresearch's ``step 00123 (41.0%) | loss: 3.21 | ...``, redrawn
with ``\\r`` (the reference ``train.py``'s ``loss 3.21`` too), and one JSON object per line
after :data:`PROGRESS_PREFIX`: ``AUTORESEARCH_PROGRESS {"fraction": 0.41, "loss": 3.21}``.
Anything else, a malformed or hostile line included, is no progress.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: The line prefix of the JSON progress channel on the script's stdout.
PROGRESS_PREFIX = "AUTORESEARCH_PROGRESS"
#: Longer lines are not progress lines: they are skipped unread.
MAX_LINE = 4096
#: Losses beyond this are no training loss anyone reports; such lines are ignored.
MAX_LOSS = 1e6

#: How a stream of output splits into lines, ``\r`` redraws included.
LINE_SPLIT = re.compile(r"\r\n|\r|\n")
_STEP = re.compile(r"^\s*step\s+(?P<step>\d{1,12})(?:\s*/\s*(?P<total>\d{1,12}))?", re.I)
_PERCENT = re.compile(r"\(\s*(?P<pct>\d{1,3}(?:\.\d{0,6})?)\s*%\s*\)")
_LOSS = re.compile(
    r"\bloss\s*[:=]?\s*(?P<loss>[-+]?(?:\d{1,12}(?:\.\d{0,12})?|\.\d{1,12})(?:[eE][-+]?\d{1,3})?)",
    re.I,
)


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress line: the loss, and the fraction of the budget when the line says it."""

    loss: float
    fraction: float | None = None
    step: int | None = None
    #: From the JSON channel: once a script uses it, its text lines are not read.
    json: bool = False


def parse_progress(line: str) -> Progress | None:
    """The progress a line reports, or None for any other line (or a malformed one)."""
    if len(line) > MAX_LINE:
        return None
    text = line.strip()
    if text.startswith(PROGRESS_PREFIX):
        return _parse_json(text[len(PROGRESS_PREFIX) :])
    match = _STEP.match(text)
    if match is None:
        return None
    loss = _LOSS.search(text, match.end())
    if loss is None:
        return None
    value = _finite(float(loss.group("loss")))
    if value is None:
        return None
    step, total = int(match.group("step")), match.group("total")
    percent = _PERCENT.search(text, match.end())
    fraction: float | None = None
    if percent is not None:
        fraction = float(percent.group("pct")) / 100
    elif total is not None and int(total) > 0:
        fraction = step / int(total)
    return Progress(value, _clamp(fraction), step)


def _parse_json(text: str) -> Progress | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    loss, fraction, step = _as_float(data.get("loss")), data.get("fraction"), data.get("step")
    if loss is None or _finite(loss) is None:
        return None
    if fraction is not None:
        fraction = _as_float(fraction)
        if fraction is None or fraction < 0:
            return None
    whole = step if isinstance(step, int) and not isinstance(step, bool) else None
    return Progress(loss, _clamp(fraction), whole, json=True)


def _as_float(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, a string, 1e999)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) and abs(value) <= MAX_LOSS else None


def _clamp(fraction: float | None) -> float | None:
    return None if fraction is None else min(1.0, max(0.0, fraction))
