"""Sharing what a worker learned: follow-ups to its keeps, and crash insights now and then.

A :class:`Sharing` belongs to one worker. It remembers the worker's latest keep and when it
last looked for insights, and publishes notes to the collective memory; a memory out of
reach costs the notes only, never the run loop. The notes themselves are computed by pure
functions: a hypothesis when a change moved the best and its direction is not exhausted
("MATRIX_LR 0.04 → 0.05 improved; try 0.0625"), in the record shape the ``hypotheses``
strategy reads (:mod:`autoresearchd.proposers.hypotheses`), and insights from the history,
such as "DEPTH at or above 12 crashed 4/4 runs on the small tier".
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import structlog

from autoresearchd.config import Config
from autoresearchd.errors import MemoryBackendError, MutationError
from autoresearchd.hyperparams import Param, parse_params
from autoresearchd.literals import Value, is_number, literal_text, same_value
from autoresearchd.memory.protocol import CollectiveMemory
from autoresearchd.models import Best, Candidate, Note, Result, Status, sha256_text
from autoresearchd.mutation import describe
from autoresearchd.proposers.hypotheses import OPEN

log = structlog.get_logger(__name__)

#: Least seconds between two insight computations of one worker.
INSIGHT_INTERVAL_S = 600.0
#: Runs a crash insight needs before it is stated.
MIN_EVIDENCE = 3
#: Evidence keys kept in one insight.
MAX_EVIDENCE = 20
_CRASHED = (Status.CRASH, Status.TIMEOUT)


class Sharing:
    """One worker's notes to the swarm. ``baseline`` reads the workspace's train.py source."""

    def __init__(self, memory: CollectiveMemory, baseline: Callable[[], str]) -> None:
        self.memory = memory
        self.baseline = baseline
        self._last_keep: Result | None = None
        self._insights_at = 0.0

    def kept(self, result: Result) -> None:
        """Remember a keep, so the next :meth:`share` can follow it up."""
        self._last_keep = result

    async def share(self, config: Config, candidate: Candidate, best: Best | None) -> None:
        """Publish a follow-up hypothesis after a keep, and insights now and then."""
        if not config.proposer.share_notes:
            return
        kept, self._last_keep = self._last_keep, None
        notes: list[tuple[str, Note]] = []
        now = time.time()
        if kept is not None and best is not None and kept.train_py_sha256 == candidate.sha256:
            spaces = self.proposer_spaces()
            note = follow_up(best.train_py, kept, config.daemon.agent, now, spaces)
            notes += [("hypotheses", note)] if note else []
        if now - self._insights_at >= INSIGHT_INTERVAL_S:
            self._insights_at = now
            notes += [("insights", n) for n in await self.insights(config, now)]
        for kind, note in notes:
            await self.put_note(kind, note)

    def proposer_spaces(self) -> dict[str, Param] | None:
        try:
            return parse_params(self.baseline())
        except (OSError, MutationError):
            return None

    async def insights(self, config: Config, now: float) -> list[Note]:
        track = config.experiment.track
        try:
            results = await self.memory.results(track, limit=config.proposer.max_history)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            return []
        if not results:
            return []
        baseline = self.baseline()
        found = await anyio.to_thread.run_sync(
            crash_insights, results, config.daemon.agent, now, baseline
        )
        return list(found)

    async def put_note(self, kind: str, note: Note) -> None:
        try:
            created = await self.memory.put_note(kind, note)
        except MemoryBackendError as exc:
            log.warning("note_unpublished", kind=kind, error=str(exc))
            return
        if created:
            log.info("note_published", kind=kind, key=note.key, title=note.value.get("title"))


# --- publishing: follow-up hypotheses -----------------------------------------------------


def follow_up(
    parent: str, kept: Result, agent_id: str, now: float, spaces_from: Mapping[str, Param] | None
) -> Note | None:
    """A hypothesis that continues an improving change one more step, if any step is left.

    Each changed number moves again by the same ratio (log and pow2 spaces) or difference
    (int and linear spaces); a move that leaves its space ends that direction.
    """
    try:
        before = parse_params(parent, spaces_from=spaces_from)
        after = parse_params(kept.train_py, spaces_from=spaces_from)
    except MutationError:
        return None
    moved = {
        n: p.value
        for n, p in after.items()
        if n in before and not same_value(p.value, before[n].value)
    }
    nxt = {n: v for n in moved if (v := _next_step(before[n], after[n])) is not None}
    if not nxt:
        return None
    done = describe(before, moved)
    plan = ", ".join(f"{n} {literal_text(after[n].kind, v)}" for n, v in nxt.items())
    return _note(
        agent_id,
        now,
        f"{kept.track} {kept.train_py_sha256}",
        title=f"{done} improved; try {plan}",
        hypothesis=f"{done} improved val_bpb to {kept.best_bpb}; the direction is not exhausted.",
        suggested_config=nxt,
        track=kept.track,
        evidence=[kept.id],
    )


def _next_step(before: Param, after: Param) -> Value | None:
    old, new, space = before.value, after.value, after.space
    if not (is_number(old) and is_number(new)) or old == new:
        return None
    step: Value
    if space.kind in ("log", "pow2") and old > 0 and new > 0:
        ratio = new * (new / old)
        step = int(ratio) if space.kind == "pow2" else float(f"{ratio:.3g}")
    elif space.kind == "int":
        step = int(new + (new - old))
    elif space.kind == "float":
        step = float(f"{new + (new - old):.3g}")
    else:
        return None
    return step if space.contains(step) and step != new else None


def _note(agent_id: str, now: float, identity: str, **value: Any) -> Note:
    """A note keyed by its author and what it is about, so one finding is stored once."""
    key = f"{agent_id}--{sha256_text(identity)[:16]}"
    record = {**value, "agent_id": agent_id, "created_at": now, "status": OPEN}
    return Note(key=key, agent_id=agent_id, value=record, created_at=now)


# --- publishing: insights from the history ------------------------------------------------


def crash_insights(
    results: Sequence[Result], agent_id: str, now: float, baseline: str
) -> list[Note]:
    """Thresholds above which every run crashed, per parameter and VRAM tier.

    For each numeric parameter and tier, the lowest value ``t`` such that at least
    ``MIN_EVIDENCE`` runs used a value ``>= t``, all of them crashed, and some run below
    ``t`` did not: e.g. "DEPTH at or above 12 crashed 4/4 runs on the small tier".
    """
    try:
        params = parse_params(baseline)
    except MutationError:
        return []
    runs = _numeric_runs(results, params)
    notes = []
    for (name, tier), points in sorted(runs.items()):
        found = _crash_threshold(points)
        if found is not None:
            notes.append(_crash_note(name, tier, found, points, agent_id, now, results[0].track))
    return notes


Point = tuple[float, bool, str]  # value, crashed, result id


def _numeric_runs(
    results: Iterable[Result], params: Mapping[str, Param]
) -> dict[tuple[str, str], list[Point]]:
    runs: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for result in results:
        if result.status not in (Status.KEEP, Status.DISCARD, *_CRASHED):
            continue
        try:
            values = parse_params(result.train_py, spaces_from=params)
        except MutationError:
            continue
        for name, param in values.items():
            if name in params and params[name].space.kind != "fixed" and is_number(param.value):
                crashed = result.status in _CRASHED
                runs[(name, result.vram_tier)].append((float(param.value), crashed, result.id))
    return runs


def _crash_threshold(points: Sequence[Point]) -> float | None:
    """The lowest value from which every run crashed, with enough runs and a healthy run below."""
    ordered = sorted(points, key=lambda p: p[0])
    threshold: float | None = None
    for value, crashed, _ in reversed(ordered):
        if not crashed:
            break
        threshold = value
    if threshold is None or not math.isfinite(threshold):
        return None
    above = [p for p in ordered if p[0] >= threshold]
    healthy_below = any(not crashed for value, crashed, _ in ordered if value < threshold)
    return threshold if len(above) >= MIN_EVIDENCE and healthy_below else None


def _crash_note(
    name: str,
    tier: str,
    threshold: float,
    points: Sequence[Point],
    agent_id: str,
    now: float,
    track: str,
) -> Note:
    above = [p for p in points if p[0] >= threshold]
    shown = int(threshold) if threshold.is_integer() else threshold
    text = f"{name} at or above {shown} crashed {len(above)}/{len(above)} runs on the {tier} tier"
    return _note(
        agent_id,
        now,
        f"{track} {tier} {name} {shown}",
        title=text,
        insight=text,
        track=track,
        parameter=name,
        tier=tier,
        threshold=shown,
        evidence=[p[2] for p in above][:MAX_EVIDENCE],
    )
