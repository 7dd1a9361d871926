"""Draw the swarm's progress: every result's val_bpb over time, keeps marked, best as a step line.

The picture follows karpathy/autoresearch's ``progress.png``, as the dashboard's chart
does: one dot per run that reported a val_bpb (crashes have none), kept results drawn
large and labelled with their descriptions, provisional runs (awaiting replication) as
hollow diamonds, the running best (the lowest kept val_bpb so far) as a step line, the
track's floor as a dashed line where it is known, and a title with the counts ("83
experiments, 15 kept"). Several agents get one colour each. matplotlib is an optional
extra (``pip install 'autoresearchd[plot]'``), imported only when a plot is drawn and
always with the file-only Agg backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from autoresearchd.errors import MissingExtraError
from autoresearchd.models import Result, Status

MISSING_MATPLOTLIB = (
    "the progress plot needs matplotlib: pip install 'autoresearchd[plot]' (or matplotlib)"
)
DISCARD_GREY = "#b0b0b0"
BEST_COLOUR = "#2a9d4b"
PROVISIONAL_COLOUR = "#c77800"
FLOOR_COLOUR = "#b03030"
#: Characters of a keep's description its label shows.
LABEL_CHARS = 48
FIGURE_SIZE = (12.0, 6.0)
DPI = 120


def running_best(results: Sequence[Result]) -> list[tuple[float, float]]:
    """``(completed_at, best so far)`` at each kept result that lowered the best, oldest first."""
    steps: list[tuple[float, float]] = []
    for result in sorted(results, key=lambda r: r.completed_at):
        value = result.best_bpb
        if result.status is not Status.KEEP or value is None or not math.isfinite(value):
            continue
        if not steps or value < steps[-1][1]:
            steps.append((result.completed_at, value))
    return steps


def plotted(results: Sequence[Result]) -> list[Result]:
    """The results that have a finite val_bpb to draw."""
    return [r for r in results if r.val_bpb is not None and math.isfinite(r.val_bpb)]


def plot_progress(
    results: Sequence[Result], out: Path, *, title: str, floor: float | None = None
) -> int:
    """Write the progress picture of ``results`` to ``out``; returns how many dots it drew."""
    plt = _pyplot()
    fig = draw_progress(results, title=title, floor=floor)
    try:
        fig.savefig(out)
    finally:
        plt.close(fig)
    return len(plotted(results))


def counts_title(title: str, results: Sequence[Result]) -> str:
    """``title`` with the counts: "<title>: 83 experiments, 15 kept"."""
    kept = sum(1 for r in results if r.status is Status.KEEP)
    return f"{title}: {len(results)} experiments, {kept} kept"


def draw_progress(results: Sequence[Result], *, title: str, floor: float | None = None) -> Any:
    """The progress picture of ``results`` as a matplotlib Figure (the caller closes it)."""
    plt = _pyplot()
    points = plotted(results)
    fig, ax = plt.subplots(figsize=FIGURE_SIZE, dpi=DPI)
    _draw_results(ax, points)
    _draw_provisional(ax, points)
    _draw_best(ax, results, points)
    _label_keeps(ax, points)
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color=FLOOR_COLOUR, linestyle="--", linewidth=1, label="floor")
    ax.set_title(counts_title(title, results))
    ax.set_xlabel("completed at")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def prepared_floor(data_dir: Path, track: str) -> float | None:
    """The floor of val_bpb the prepared data of ``track`` recorded, if it knows one."""
    from autoresearchd.errors import DataError
    from autoresearchd.tracks.definitions import get_track
    from autoresearchd.tracks.prepare import load_prepared

    try:
        prepared = load_prepared(data_dir / get_track(track).dirname)
    except DataError:
        return None
    return prepared.entropy_floor_bpb if prepared is not None else None


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(MISSING_MATPLOTLIB, extra="plot") from None
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _draw_results(ax: Any, points: Sequence[Result]) -> None:
    agents = sorted({r.agent_id for r in points})
    several = len(agents) > 1
    palette = _palette(len(agents))
    for agent, colour in zip(agents, palette, strict=True):
        mine = [r for r in points if r.agent_id == agent]
        others = [r for r in mine if r.status is not Status.KEEP]
        kept = [r for r in mine if r.status is Status.KEEP]
        label = agent if several else "run"
        ax.scatter(
            [_when(r) for r in others],
            [r.val_bpb for r in others],
            s=14,
            color=colour if several else DISCARD_GREY,
            alpha=0.6,
            label=label,
        )
        ax.scatter(
            [_when(r) for r in kept],
            [r.val_bpb for r in kept],
            s=70,
            color=colour if several else BEST_COLOUR,
            edgecolors="black",
            linewidths=0.8,
            zorder=3,
            label=f"{agent} kept" if several else "kept",
        )


def _draw_provisional(ax: Any, points: Sequence[Result]) -> None:
    """Runs that beat the best and await replication: hollow diamonds over their dots."""
    waiting = [r for r in points if r.provisional and r.status is not Status.KEEP]
    if waiting:
        ax.scatter(
            [_when(r) for r in waiting],
            [r.val_bpb for r in waiting],
            s=60,
            marker="D",
            facecolors="none",
            edgecolors=PROVISIONAL_COLOUR,
            linewidths=1.2,
            zorder=4,
            label="provisional",
        )


def _label_keeps(ax: Any, points: Sequence[Result]) -> None:
    for result in points:
        if result.status is not Status.KEEP or not result.description:
            continue
        text = result.description
        if len(text) > LABEL_CHARS:
            text = text[: LABEL_CHARS - 1] + "…"
        ax.annotate(
            text,
            (_when(result), result.val_bpb),
            xytext=(6, 6),
            textcoords="offset points",
            rotation=25,
            fontsize="x-small",
            color=BEST_COLOUR,
        )


def _draw_best(ax: Any, results: Sequence[Result], points: Sequence[Result]) -> None:
    steps = running_best(results)
    if not steps or not points:
        return
    end = max(r.completed_at for r in points)
    times = [_when_ts(t) for t, _ in steps] + [_when_ts(max(end, steps[-1][0]))]
    values = [v for _, v in steps] + [steps[-1][1]]
    ax.step(times, values, where="post", color=BEST_COLOUR, linewidth=2, label="best so far")


def _palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _when(result: Result) -> datetime:
    return _when_ts(result.completed_at)


def _when_ts(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp)
