"""Turn results and bests read from the collective memory into text or JSON for people.

Pure functions only: the ``results`` and ``best`` commands read the memory and hand
what they got to these, so every format is tested without a terminal or a database.
Tables are space-aligned columns, coloured with a few ANSI codes when the caller says
the output is a terminal (whole rows, so colour never shifts a column) and plain
otherwise; JSON objects are community records, without the full ``train_py`` source
unless asked for, and with non-finite numbers (a crashed run's NaN) as ``null`` so that
any JSON parser accepts them. The running daemon's status renders here too, as the
``status`` table and as the one line systemd shows (:func:`status_line`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

from autoresearchd.models import CPU_TIER, TIER_BOUNDS_GB, Best, Result, Status

#: Every tier a best may be kept for, in the order reports list them.
TIERS: tuple[str, ...] = (*(name for name, _ in TIER_BOUNDS_GB), "xl", CPU_TIER)
SHA_SHOWN = 12
MISSING = "-"
#: How a hub's seeded best reads before anyone has scored it (its val_bpb is infinite).
UNSCORED = "unscored"
PROVISIONAL = "provisional"
REJECTED = "rejected"
#: The LEFT of a run past its training budget: the script is evaluating (within its grace).
EVALUATING = "evaluating"

BOLD, DIM, RED, GREEN, YELLOW, MAGENTA = "1", "2", "31", "32", "33", "35"
STATUS_COLOURS = {
    Status.KEEP: f"{BOLD};{GREEN}",
    Status.CRASH: RED,
    Status.TIMEOUT: YELLOW,
    Status.INVALID: MAGENTA,
}
STATE_COLOURS = {
    "running": GREEN,
    "finishing": GREEN,
    "paused": DIM,
    "stopping": YELLOW,
    "too_hot": RED,
    "backing_off": RED,
    "waiting_foreign_process": YELLOW,
}


def results_json(results: Sequence[Result], *, full: bool = False) -> list[dict[str, Any]]:
    """Result records, leaving out the ``train_py`` source unless ``full``."""
    return [_without_source(result.to_record(), full) for result in results]


def results_table(
    results: Sequence[Result],
    *,
    track: str,
    tz: tzinfo | None = None,
    colour: bool = False,
    replicates: int | None = None,
    older: Sequence[Result] = (),
) -> str:
    """A table of results (time, agent, status, val_bpb, delta, description).

    The status says where a run stands in replication (see :func:`run_labels`, which
    also reads ``older`` results, not shown, and takes ``replicates`` as the count
    wanted). With ``colour``, keeps are bold green, crashes red, timeouts yellow, and
    runs still awaiting replication dim.
    """
    if not results:
        return f"no results yet for track {track}"
    labels = run_labels([*results, *older], replicates)
    rows = [("TIME", "AGENT", "STATUS", "VAL_BPB", "DELTA", "DESCRIPTION")]
    rows += [
        (
            format_time(r.completed_at, tz),
            r.agent_id,
            labels.get(r.id, status_label(r)),
            format_bpb(r.val_bpb),
            format_delta(r.delta_vs_best),
            r.description,
        )
        for r in results
    ]
    if not colour:
        return align(rows)
    styles = [BOLD, *(DIM if r.provisional else STATUS_COLOURS.get(r.status, "") for r in results)]
    return paint_lines(align(rows), styles)


def run_labels(results: Sequence[Result], replicates: int | None = None) -> dict[str, str]:
    """Status texts, by result id, for the runs that take part in a replication.

    A run that beat the best is ``provisional``; each later run of the same source is a
    replicate of it, numbered in time order (``replicate 1/2``, the ``/2`` when the count
    wanted is known). A replicate that ended the replication says how: ``keep``, a crash
    or timeout, or ``rejected`` when its scores did not hold up, which is not the same
    as a change that never looked better (a plain ``discard``). Other runs get no label.
    """
    labels: dict[str, str] = {}
    counts: dict[str, int] = {}  # sources with a provisional run: replicates seen since
    for result in sorted(results, key=lambda r: r.completed_at):
        sha = result.train_py_sha256
        if sha in counts:
            counts[sha] += 1
            labels[result.id] = _replicate_label(result, counts[sha], replicates)
        elif result.provisional:
            counts[sha] = 0
            labels[result.id] = PROVISIONAL
    return labels


def status_label(result: Result) -> str:
    """A result's status; a run stopped as hopeless says how much of its budget it used."""
    if result.stopped_early is not None:
        return stopped_early_label(result.stopped_early)
    return str(result.status)


def stopped_early_label(fraction: float) -> str:
    return f"stopped_early {fraction:.0%}"


def early_stopping_text(devices: Sequence[Mapping[str, Any]]) -> str:
    """Where early stopping stands for the devices' tracks and tiers, each said once."""
    texts: list[str] = []
    for device in devices:
        state = device.get("early_stopping")
        if not state:
            continue
        if state.get("on"):
            text = (
                f"early stopping on from {state['from_fraction']:.0%} of the budget "
                f"({state['curves']} curves)"
            )
        else:
            text = f"early stopping off: {state.get('reason', '')}"
        if text not in texts:
            texts.append(text)
    return " · ".join(texts)


def _replicate_label(result: Result, n: int, replicates: int | None) -> str:
    which = f"replicate {n}/{replicates}" if replicates else f"replicate {n}"
    if result.provisional:  # more replicates to come
        return which
    verdict = REJECTED if result.status is Status.DISCARD else str(result.status)
    return f"{verdict}, {which}"


def bests_json(
    track: str, best: Best | None, tiers: Mapping[str, Best], *, full: bool = False
) -> dict[str, Any]:
    """The track's best and its per-tier bests as one JSON object (``best`` may be null)."""
    return {
        "track": track,
        "best": _without_source(best.to_record(), full) if best else None,
        "tiers": {tier: _without_source(b.to_record(), full) for tier, b in tiers.items()},
    }


def bests_table(
    track: str, best: Best | None, tiers: Mapping[str, Best], *, tz: tzinfo | None = None
) -> str:
    """A table with the track's best first, then one row per tier that has a best.

    A best seeded by a hub and not scored yet reads ``unscored``, not ``inf``.
    """
    if best is None and not tiers:
        return f"no best yet for track {track}"
    rows = [("SCOPE", "VAL_BPB", "AGENT", "RESULT", "SHA256", "UPDATED")]
    scoped = [(f"track {track}", best)] if best else []
    scoped += [(f"tier {tier}", b) for tier, b in tiers.items()]
    rows += [
        (
            scope,
            format_best(b.val_bpb),
            b.agent_id,
            b.result_id,
            b.train_py_sha256[:SHA_SHOWN],
            format_time(b.updated_at, tz),
        )
        for scope, b in scoped
    ]
    return align(rows)


def paint(text: str, style: str) -> str:
    """``text`` in an ANSI SGR ``style`` (e.g. ``"1;32"``); unchanged for an empty style."""
    return f"\x1b[{style}m{text}\x1b[0m" if style and text else text


def paint_lines(text: str, styles: Sequence[str]) -> str:
    return "\n".join(
        paint(line, style) for line, style in zip(text.splitlines(), styles, strict=True)
    )


def status_text(
    snapshot: Mapping[str, Any], *, tz: tzinfo | None = None, colour: bool = False
) -> str:
    """The running daemon's state: a header, then one row per device."""
    header = (
        f"autoresearchd {snapshot['version']} · pid {snapshot['pid']} · "
        f"agent {snapshot['agent']} · track {snapshot['track']} · {snapshot['state']} "
        f"since {format_time(snapshot['started_at'], tz)}"
    )
    best = snapshot.get("best_bpb")
    summary = (
        f"best {format_bpb(best) if best is not None else 'none yet'} · "
        f"{snapshot['outbox_depth']} queued for publishing · {memory_text(snapshot['memory'])}"
    )
    if stopping := early_stopping_text(snapshot["devices"]):
        summary += f"\n{stopping}"
    if held := snapshot.get("outbox_held", 0):
        summary += f"\n{held} held in memory: the disk refused them ({snapshot['outbox_error']})"
    rows: list[tuple[str, ...]] = [
        ("#", "DEVICE", "STATE", "ELAPSED", "LEFT", "LAST_VAL_BPB", "EXPERIMENT")
    ]
    rows += [_device_row(d) for d in snapshot["devices"]]
    table = align(rows)
    if colour:
        styles = [BOLD, *(STATE_COLOURS.get(d["state"], "") for d in snapshot["devices"])]
        table = paint_lines(table, styles)
    return "\n".join((header, summary, "", table))


def memory_text(memory: Mapping[str, Any]) -> str:
    where = memory["backend"] + (f" {memory['url']}" if memory.get("url") else "")
    reachable = memory.get("reachable")
    if reachable is None:
        return f"memory {where}: not contacted yet"
    if reachable:
        return f"memory {where}: reachable"
    return f"memory {where}: unreachable ({memory.get('last_error', '')})"


def status_line(snapshot: Mapping[str, Any]) -> str:
    """``4 GPUs · 4 running · best 0.973100 · 2 results queued`` from a snapshot."""
    devices = snapshot.get("devices", [])
    parts = [_device_count(devices)]
    states = [d["state"] for d in devices]
    parts.append(f"{sum(s in ('running', 'finishing') for s in states)} running")
    for state in ("paused", "too_hot", "waiting_foreign_process", "backing_off"):
        if n := states.count(state):
            parts.append(f"{n} {state.replace('_', ' ')}")
    best = snapshot.get("best_bpb")
    parts.append("no best yet" if best is None else f"best {best:.6f}")
    queued = snapshot.get("outbox_depth", 0)
    parts.append(f"{queued} result{'' if queued == 1 else 's'} queued")
    if held := snapshot.get("outbox_held", 0):
        parts.append(f"{held} held in memory ({snapshot.get('outbox_error', '')})")
    if snapshot.get("state") == "draining":
        parts.insert(0, "stopping")
    return " · ".join(parts)


def _device_count(devices: Sequence[Mapping[str, Any]]) -> str:
    gpus = sum(d["kind"] == "cuda" for d in devices)
    cpus = len(devices) - gpus
    words = []
    if gpus:
        words.append(f"{gpus} GPU{'' if gpus == 1 else 's'}")
    if cpus:
        words.append(f"{cpus} CPU worker{'' if cpus == 1 else 's'}")
    return " + ".join(words) or "no devices"


def _device_row(device: Mapping[str, Any]) -> tuple[str, ...]:
    run = device.get("experiment")
    return (
        str(device["index"]),
        device["uuid"],
        device["state"].replace("_", " "),
        format_seconds(run["elapsed_s"]) if run else MISSING,
        _time_left(run) if run else MISSING,
        _last(device),
        run["description"] if run else MISSING,
    )


def _last(device: Mapping[str, Any]) -> str:
    """The last run's val_bpb, or how early it was stopped when it was."""
    stopped = device.get("last_stopped_early")
    return (
        stopped_early_label(stopped)
        if stopped is not None
        else format_bpb(device.get("last_val_bpb"))
    )


def _time_left(run: Mapping[str, Any]) -> str:
    """The training time left, or what the run does once its budget is spent."""
    remaining: float = run["remaining_s"]
    return format_seconds(remaining) if remaining >= 1 else EVALUATING


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def align(rows: Sequence[Sequence[str]]) -> str:
    """Left-align columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_time(timestamp: float, tz: tzinfo | None = None) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM:SS``, local unless ``tz`` is given."""
    return datetime.fromtimestamp(timestamp, tz).strftime("%Y-%m-%d %H:%M:%S")


def format_bpb(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.6f}" if math.isfinite(value) else str(value)


def format_best(value: float) -> str:
    """A best's val_bpb; a hub's seeded baseline is infinite until someone scores it."""
    return format_bpb(value) if math.isfinite(value) else UNSCORED


def format_delta(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:+.6f}" if math.isfinite(value) else str(value)


def _without_source(record: dict[str, Any], full: bool) -> dict[str, Any]:
    if not full:
        record.pop("train_py", None)
    return {key: _finite(value) for key, value in record.items()}


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity, however deeply nested, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
