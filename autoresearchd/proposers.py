"""Proposers turn a parent train.py into a fresh candidate; ``perturb`` is the first strategy.

A proposer never hands back a candidate the swarm has already run or claimed (it asks the
collective memory through ``is_known``) nor one it proposed before in this process, so a
worker never spends GPU time on a duplicate. When the trusted baseline is given, every
space comes from it, so a parent pulled from the network cannot widen its own search by
editing its annotations.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from autoresearchd.config import DEFAULT_MAX_CHANGES, ProposerConfig
from autoresearchd.errors import ConfigError
from autoresearchd.models import Candidate, sha256_text
from autoresearchd.mutation import Param, apply_changes, describe, parse_params, sample_changes

log = structlog.get_logger(__name__)

DEFAULT_ATTEMPTS = 50

#: Asks the collective memory whether a source hash was ever run or is claimed now.
IsKnown = Callable[[str], Awaitable[bool]]


class Proposer(Protocol):
    """A search strategy: one fresh candidate derived from ``parent``, or None if it has none.

    This is a Protocol; implementations raise :class:`MutationError` when the parent's
    hyperparameter block cannot be read.
    """

    name: str

    async def propose(self, parent: Candidate, is_known: IsKnown) -> Candidate | None: ...


class PerturbProposer:
    """Moves 1..``max_changes`` hyperparameters of the parent to neighbouring values."""

    name = "perturb"

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

    async def propose(self, parent: Candidate, is_known: IsKnown) -> Candidate | None:
        params = parse_params(parent.source, spaces_from=self._spaces)
        for _ in range(self.attempts):
            changes = sample_changes(params, self._rng, self.max_changes)
            if not changes:
                continue
            source = apply_changes(parent.source, changes)
            digest = sha256_text(source)
            if digest in self._proposed or await is_known(digest):
                continue
            self._proposed.add(digest)
            description = describe(params, changes)
            return Candidate(
                source=source,
                parent_sha256=parent.sha256,
                description=description,
                proposer=self.name,
                sha256=digest,
            )
        log.warning("proposer_exhausted", parent=parent.sha256[:12], attempts=self.attempts)
        return None


def make_proposer(
    config: ProposerConfig, rng: random.Random | None = None, baseline: str | None = None
) -> Proposer:
    """The proposer ``config.strategy`` names; ``baseline`` is the trusted train.py, if any."""
    if config.strategy == "perturb":
        return PerturbProposer(config.max_changes, rng=rng, baseline=baseline)
    raise ConfigError(f"unknown strategy {config.strategy!r}", key="proposer.strategy")
