"""The ``hypotheses`` strategy: run the open hypotheses the swarm publishes.

A hypothesis note follows the community record shape: ``{title, hypothesis,
suggested_config, agent_id, created_at, status}`` plus ``track`` and ``evidence`` (result
ids). Its ``suggested_config`` maps parameter names to values; applied to the current best
it gives a candidate whose claim is content-addressed, so "unclaimed" means "its source was
never run nor is claimed now", and two workers picking the same hypothesis collide on the
claim. Writing notes for others (follow-ups and insights) is :mod:`autoresearchd.sharing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from autoresearchd.hyperparams import Param, movable, parse_params
from autoresearchd.literals import Value, same_value
from autoresearchd.models import Candidate
from autoresearchd.proposers.base import EMPTY_CONTEXT, IsKnown, ProposalContext, fresh_candidate

log = structlog.get_logger(__name__)

#: The status of a hypothesis nobody has closed: the only one a worker picks up.
OPEN = "open"


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
            if not same_value(coerced, param.value):
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
