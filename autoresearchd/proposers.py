"""Proposers turn a parent train.py into a fresh candidate; ``make_proposer`` picks the strategy.

Strategies: ``portfolio`` (the default: broad samples, a dependency-free TPE-like model
and local steps, in :mod:`autoresearchd.portfolio`), ``perturb`` (neighbours of the
parent), ``tpe`` (Optuna's TPE, in :mod:`autoresearchd.search`), ``hypotheses`` (the
swarm's open suggestions, in :mod:`autoresearchd.hypotheses`), ``command`` (an external
research agent, in :mod:`autoresearchd.agent`) and ``mixed`` (a weighted draw among the
others, falling through to the next when one has nothing to offer). History-aware
strategies receive a :class:`ProposalContext` that the worker builds from the collective
memory.

A proposer never hands back a candidate the swarm has already run or claimed (it asks the
collective memory through ``is_known``) nor one it proposed before in this process, so a
worker never spends GPU time on a duplicate. When the trusted baseline is given, every
space comes from it, so a parent pulled from the network cannot widen its own search by
editing its annotations.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from autoresearchd.config import DEFAULT_MAX_CHANGES, ProposerConfig
from autoresearchd.errors import ConfigError
from autoresearchd.memory.protocol import Note
from autoresearchd.models import Candidate, Result, sha256_text
from autoresearchd.mutation import (
    Param,
    Value,
    apply_changes,
    describe,
    movable,
    parse_params,
    sample_changes,
)

log = structlog.get_logger(__name__)

DEFAULT_ATTEMPTS = 50

#: Asks the collective memory whether a source hash was ever run or is claimed now.
IsKnown = Callable[[str], Awaitable[bool]]


#: The strategies ``mixed`` can draw from.
STRATEGIES = ("portfolio", "perturb", "tpe", "hypotheses", "command")


@dataclass(frozen=True, slots=True)
class ProposalContext:
    """What the swarm knows when a proposal is made (empty when the memory is out of reach).

    ``results`` are the track's results, newest first, from every agent; ``in_flight``
    holds the sources of candidates being run now, which a proposal should steer away from;
    ``hypotheses`` and ``insights`` are the swarm's notes, newest first. ``device`` is the
    kind of device the candidate will run on (``cuda`` or ``cpu``; empty when unknown): a
    parameter whose space names another kind is left alone (:func:`mutation.movable`).
    ``tier`` is the device's VRAM tier (empty when unknown): history-aware search learns
    from that tier's results, since another tier's val_bpb sits on another scale.
    """

    results: Sequence[Result] = ()
    in_flight: Sequence[str] = ()
    hypotheses: Sequence[Note] = ()
    insights: Sequence[Note] = ()
    device: str = ""
    tier: str = ""


EMPTY_CONTEXT = ProposalContext()


class Proposer(Protocol):
    """A search strategy: one fresh candidate derived from ``parent``, or None if it has none.

    This is a Protocol; implementations raise :class:`MutationError` when the parent's
    hyperparameter block cannot be read, and :class:`ProposalError` when a failure is worth
    recording as a result. ``uses_history`` says whether ``context`` is read, so the worker
    fetches the history only for strategies that learn from it.
    """

    name: str
    uses_history: bool

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None: ...


async def fresh_candidate(
    proposer: str,
    parent: Candidate,
    params: Mapping[str, Param],
    changes: Mapping[str, Value],
    proposed: set[str],
    is_known: IsKnown,
) -> Candidate | None:
    """``parent`` with ``changes``, unless there are none or the result is not fresh.

    Fresh means neither proposed before by this proposer (``proposed``, which it joins) nor
    known to the swarm (run or claimed).
    """
    if not changes:
        return None
    source = apply_changes(parent.source, changes)
    digest = sha256_text(source)
    if digest in proposed or await is_known(digest):
        return None
    proposed.add(digest)
    return Candidate(source, parent.sha256, describe(params, changes), proposer, digest)


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


class MixedProposer:
    """Draws a strategy by weight for each proposal; one with nothing to offer passes to the next.

    The candidate keeps the name of the strategy that made it, so results record it.
    """

    name = "mixed"

    def __init__(
        self, choices: Mapping[str, tuple[float, Proposer]], rng: random.Random | None = None
    ) -> None:
        self.choices = {name: pair for name, pair in choices.items() if pair[0] > 0}
        self._rng = rng or random.Random()
        self.uses_history = any(p.uses_history for _, p in self.choices.values())

    def order(self) -> list[str]:
        """Strategy names in a weighted random order (weighted sampling without replacement)."""
        keys = {name: self._rng.random() ** (1.0 / w) for name, (w, _) in self.choices.items()}
        return sorted(keys, key=keys.__getitem__, reverse=True)

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        for name in self.order():
            candidate = await self.choices[name][1].propose(parent, is_known, context)
            if candidate is not None:
                return candidate
        return None


def make_proposer(
    config: ProposerConfig,
    rng: random.Random | None = None,
    baseline: str | None = None,
    *,
    trust: str = "params-only",
    taken: dict[str, str] | None = None,
) -> Proposer:
    """The proposer ``config.strategy`` names; ``baseline`` is the trusted train.py, if any.

    ``taken`` maps the hypothesis keys picked up to their candidates, shared by the workers
    of one daemon.

    ``tpe`` needs optuna: when it is missing, the daemon logs one line and uses ``perturb``.
    """
    rng = rng or random.Random()
    if config.strategy != "mixed":
        return _single(config.strategy, config, rng, baseline, trust, taken)
    choices = {
        name: (weight, _single(name, config, rng, baseline, trust, taken))
        for name, weight in config.weights.items()
        if weight > 0 and (name != "command" or config.command)
    }
    if not choices:
        raise ConfigError("no strategy with a weight > 0 can run", key="proposer.weights")
    return MixedProposer(choices, rng)


def _single(
    strategy: str,
    config: ProposerConfig,
    rng: random.Random,
    baseline: str | None,
    trust: str,
    taken: dict[str, str] | None,
) -> Proposer:
    # Imported here: these modules build on this one (ProposalContext, PerturbProposer).
    from autoresearchd.agent import CommandProposer
    from autoresearchd.hypotheses import HypothesisProposer
    from autoresearchd.portfolio import PortfolioProposer
    from autoresearchd.search import TpeProposer

    if strategy == "portfolio":
        return PortfolioProposer(rng, baseline, max_history=config.max_history)
    if strategy == "perturb":
        return PerturbProposer(config.max_changes, rng=rng, baseline=baseline)
    if strategy == "tpe":
        try:
            return TpeProposer(rng, baseline, max_history=config.max_history)
        except ConfigError as exc:
            log.warning("strategy_unavailable", strategy="tpe", fallback="perturb", error=str(exc))
            return PerturbProposer(config.max_changes, rng=rng, baseline=baseline)
    if strategy == "hypotheses":
        return HypothesisProposer(baseline, taken)
    if strategy == "command":
        return CommandProposer(config, baseline=baseline, trust=trust)
    raise ConfigError(f"unknown strategy {strategy!r}", key="proposer.strategy")
