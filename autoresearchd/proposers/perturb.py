"""The ``perturb`` strategy: neighbours of the parent, a few hyperparameters at a time."""

from __future__ import annotations

import random

import structlog

from autoresearchd.config import DEFAULT_MAX_CHANGES
from autoresearchd.hyperparams import Param, movable, parse_params
from autoresearchd.models import Candidate
from autoresearchd.mutation import sample_changes
from autoresearchd.proposers.base import (
    DEFAULT_ATTEMPTS,
    EMPTY_CONTEXT,
    IsKnown,
    ProposalContext,
    fresh_candidate,
)

log = structlog.get_logger(__name__)


class PerturbProposer:
    """Moves 1..``max_changes`` hyperparameters of the parent to neighbouring values.

    Only parameters the context's device reads are moved.
    """

    name = "perturb"
    uses_history = False

    def __init__(
        self,
        max_changes: int = DEFAULT_MAX_CHANGES,
        rng: random.Random | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        baseline: str | None = None,
    ) -> None:
        self.max_changes = max_changes
        self.attempts = attempts
        self._rng = rng or random.Random()
        self._spaces: dict[str, Param] | None = parse_params(baseline) if baseline else None
        self._proposed: set[str] = set()

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        params = parse_params(parent.source, spaces_from=self._spaces)
        free = movable(params, context.device)
        for _ in range(self.attempts):
            changes = sample_changes(free, self._rng, self.max_changes)
            fresh = await fresh_candidate(
                self.name, parent, params, changes, self._proposed, is_known
            )
            if fresh is not None:
                return fresh
        log.warning("proposer_exhausted", parent=parent.sha256[:12], attempts=self.attempts)
        return None
