"""Proposers turn a parent train.py into a fresh candidate; ``make_proposer`` picks the strategy.

Strategies: ``portfolio`` (the default: broad samples, a dependency-free TPE-like model
and local steps, in :mod:`autoresearchd.portfolio`), ``perturb`` (neighbours of the
parent, in :mod:`autoresearchd.perturb`), ``tpe`` (Optuna's TPE, in
:mod:`autoresearchd.search`), ``hypotheses`` (the swarm's open suggestions, in
:mod:`autoresearchd.hypotheses`), ``command`` (an external research agent, in
:mod:`autoresearchd.agent`) and ``mixed`` (a weighted draw among the others, falling
through to the next when one has nothing to offer). History-aware strategies receive a
:class:`ProposalContext` that the worker builds from the collective memory; the
:class:`Proposer` Protocol and the types every strategy shares are in
:mod:`autoresearchd.proposal`, which imports no strategy.

A proposer never hands back a candidate the swarm has already run or claimed (it asks the
collective memory through ``is_known``) nor one it proposed before in this process, so a
worker never spends GPU time on a duplicate. When the trusted baseline is given, every
space comes from it, so a parent pulled from the network cannot widen its own search by
editing its annotations.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import structlog

from autoresearchd.agent import CommandProposer
from autoresearchd.config import ProposerConfig
from autoresearchd.errors import ConfigError
from autoresearchd.hypotheses import HypothesisProposer
from autoresearchd.models import Candidate
from autoresearchd.perturb import PerturbProposer
from autoresearchd.portfolio import PortfolioProposer
from autoresearchd.proposal import EMPTY_CONTEXT, IsKnown, ProposalContext, Proposer
from autoresearchd.search import TpeProposer

# Re-exported: callers know the base types and the perturb strategy by this module.
__all__ = [
    "EMPTY_CONTEXT",
    "STRATEGIES",
    "IsKnown",
    "MixedProposer",
    "PerturbProposer",
    "ProposalContext",
    "Proposer",
    "make_proposer",
]

log = structlog.get_logger(__name__)

#: The strategies ``mixed`` can draw from.
STRATEGIES = ("portfolio", "perturb", "tpe", "hypotheses", "command")


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
