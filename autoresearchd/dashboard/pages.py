"""Pure helpers the dashboard's pages use: the diff of two sources, chart series, formatting.

Nothing here does I/O, so each piece is tested without a server. The chart series is
what ``/dashboard/api/points`` sends: one point per result with a val_bpb, the kind of
mark it gets, and the running best as steps, so the browser only draws.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autoresearchd.dashboard.model import ResultRow

#: Lines of context around each change in a diff.
DIFF_CONTEXT = 3
#: The most diff lines a page shows; a larger diff is cut, and says so.
MAX_DIFF_LINES = 2000


@dataclass(frozen=True, slots=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "head" or "same"
    text: str


def diff_lines(parent: str | None, child: str, label: str) -> list[DiffLine]:
    """The unified diff of ``child`` against ``parent`` (an empty parent when unknown)."""
    before = (parent or "").splitlines()
    lines = difflib.unified_diff(
        before,
        child.splitlines(),
        "parent/train.py",
        f"{label}/train.py",
        n=DIFF_CONTEXT,
        lineterm="",
    )
    out = [DiffLine(_kind(line), line) for line in lines]
    if len(out) > MAX_DIFF_LINES:
        cut = len(out) - MAX_DIFF_LINES
        out = [*out[:MAX_DIFF_LINES], DiffLine("hunk", f"... {cut} more lines not shown")]
    return out


def _kind(line: str) -> str:
    if line.startswith(("+++", "---")):
        return "head"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "same")


def mark_of(row: ResultRow, kept_shas: set[str]) -> str:
    """How the chart marks a result: keep, replicate (of a kept source), provisional, run."""
    if row.status == "keep":
        return "keep"
    if row.provisional:
        return "replicate" if row.sha256 in kept_shas else "provisional"
    return "run"


def chart_series(rows: Sequence[ResultRow], floor: float | None) -> dict[str, Any]:
    """What the progress chart draws for ``rows`` (oldest first), as columns.

    ``t``, ``v``, ``mark`` and ``agent`` hold one entry per scored result (columns keep a
    few thousand points small on the wire); ``keeps`` labels the kept ones by index;
    ``best`` is the running best as ``[t, v]`` steps.
    """
    kept = {row.sha256 for row in rows if row.status == "keep"}
    out: dict[str, Any] = {"t": [], "v": [], "mark": [], "agent": [], "keeps": [], "best": []}
    low = math.inf
    for row in rows:
        if row.val_bpb is None:
            continue
        mark = mark_of(row, kept)
        if mark == "keep":
            out["keeps"].append([len(out["t"]), row.description, row.key])
            if row.val_bpb < low:
                low = row.val_bpb
                out["best"].append([row.at, row.val_bpb])
        out["t"].append(row.at)
        out["v"].append(row.val_bpb)
        out["mark"].append(mark)
        out["agent"].append(row.agent)
    return {**out, "floor": floor, "count": len(out["t"]), "kept": len(out["keeps"])}


def when(timestamp: float | None) -> str:
    """A timestamp as UTC text, to the second."""
    if timestamp is None or not math.isfinite(timestamp):
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def bpb(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def hours(value: float) -> str:
    return f"{value:.2f}"
