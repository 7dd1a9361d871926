"""Swarm hypotheses and insights: run the ones others publish, publish our own (pure + proposer).

A hypothesis note follows the community record shape: ``{title, hypothesis,
suggested_config, agent_id, created_at, status}`` plus ``track`` and ``evidence`` (result
ids). Its ``suggested_config`` maps parameter names to values; applied to the current best
it gives a candidate whose claim is content-addressed, so "unclaimed" means "its source was
never run nor is claimed now", and two workers picking the same hypothesis collide on the
claim. We publish a hypothesis when a change moved the best and its direction is not
exhausted ("MATRIX_LR 0.04 → 0.05 improved; try 0.0625"), and insights computed from the
history, such as "DEPTH at or above 12 crashed 4/4 runs on the small tier".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

import structlog

from autoresearchd.errors import MutationError
from autoresearchd.models import Candidate, Note, Result, Status, sha256_text
from autoresearchd.mutation import (
    Param,
    Value,
    describe,
    literal_text,
    movable,
    parse_params,
)
from autoresearchd.proposal import EMPTY_CONTEXT, IsKnown, ProposalContext, fresh_candidate

log = structlog.get_logger(__name__)

OPEN = "open"
#: Runs a crash insight needs before it is stated.
MIN_EVIDENCE = 3
#: Evidence keys kept in one insight.
MAX_EVIDENCE = 20
_CRASHED = (Status.CRASH, Status.TIMEOUT)


class HypothesisProposer:
    """Runs the oldest open hypothesis whose candidate is fresh (strategy ``hypotheses``).

    Oldest first, so that a stream of new notes (our own follow-ups among them) cannot
    starve one published earlier.

    ``taken`` maps the keys of the notes picked up to the candidates made from them. The
    daemon passes one mapping to all its workers: after the best moves, the same hypothesis
    gives a different candidate, which the content-addressed claim would not stop a second
    worker from running. A worker that drops such a candidate unrun gives its note back
    (:func:`give_back`). Suggested changes to parameters the context's device does not read
    are dropped.
    """

    name = "hypotheses"
    uses_history = True

    def __init__(self, baseline: str | None = None, taken: dict[str, str] | None = None) -> None:
        self._spaces: dict[str, Param] | None = parse_params(baseline) if baseline else None
        self._proposed: set[str] = set()
        self._taken = taken if taken is not None else {}

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        params = parse_params(parent.source, spaces_from=self._spaces)
        for note in reversed(context.hypotheses):  # the context lists the newest first
            if note.key in self._taken:
                continue
            changes = suggested_changes(note.value, movable(params, context.device))
            fresh = await fresh_candidate(
                self.name, parent, params, changes, self._proposed, is_known
            )
            if fresh is not None:
                self._taken[note.key] = fresh.sha256
                log.info("hypothesis_picked", key=note.key, author=note.agent_id)
                return fresh
        return None


def give_back(taken: dict[str, str], candidate: Candidate) -> None:
    """Make the note ``candidate`` came from open again: it was dropped before it ran."""
    for key in [key for key, sha256 in taken.items() if sha256 == candidate.sha256]:
        del taken[key]


def suggested_changes(value: Mapping[str, Any], params: Mapping[str, Param]) -> dict[str, Value]:
    """The changes an open hypothesis asks for, keeping only values inside their spaces.

    Values arrive as JSON, so a float suggested for an int parameter or an int for a float
    one is coerced when that loses nothing; names the parent lacks are ignored.
    """
    config = value.get("suggested_config")
    if value.get("status", OPEN) != OPEN or not isinstance(config, dict):
        return {}
    changes: dict[str, Value] = {}
    for name, raw in config.items():
        param = params.get(name)
        coerced = _coerce(param, raw) if param else None
        if param and coerced is not None and param.space.contains(coerced):
            if not _same(coerced, param.value):
                changes[name] = coerced
    return changes


def _coerce(param: Param, raw: object) -> Value | None:
    if param.kind == "float" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if param.kind in ("int", "pow2") and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if param.kind == "tuple" and isinstance(raw, list):
        return tuple(raw)
    return raw if isinstance(raw, str | int | float | bool) else None


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


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
        n: p.value for n, p in after.items() if n in before and not _same(p.value, before[n].value)
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
    if not (_is_number(old) and _is_number(new)) or old == new:
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


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
            if name in params and params[name].space.kind != "fixed" and _is_number(param.value):
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
