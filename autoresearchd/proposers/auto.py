"""Builds the proposer the config names (``make_proposer``): one strategy, or a weighted mix.

Strategies, one module each in this package: ``portfolio`` (the default: broad samples, a
dependency-free TPE-like model and local steps), ``perturb`` (neighbours of the parent),
``tpe`` (Optuna's TPE), ``hypotheses`` (the swarm's open suggestions), ``command`` (an
external research agent) and ``mixed`` (a weighted draw among the others, falling through
to the next when one has nothing to offer). History-aware strategies receive a
:class:`ProposalContext` that the worker builds from the collective memory; the
:class:`Proposer` Protocol and the types every strategy shares are in
:mod:`autoresearchd.proposers.base`, which imports no strategy.

A proposer never hands back a candidate the swarm has already run or claimed (it asks the
collective memory through ``is_known``) nor one it proposed before in this process, so a
worker never spends GPU time on a duplicate. When the trusted baseline is given, every
space comes from it, so a parent pulled from the network cannot widen its own search by
editing its annotations.
"""

from __future__ import annotations

import random

import structlog

from autoresearchd.config import ProposerConfig
from autoresearchd.errors import ConfigError
from autoresearchd.proposers.base import Proposer
from autoresearchd.proposers.command import CommandProposer
from autoresearchd.proposers.hypotheses import HypothesisProposer
from autoresearchd.proposers.mixed import MixedProposer
from autoresearchd.proposers.perturb import PerturbProposer
from autoresearchd.proposers.portfolio import PortfolioProposer
from autoresearchd.proposers.tpe import TpeProposer

log = structlog.get_logger(__name__)

#: The strategies ``mixed`` can draw from.
STRATEGIES = ("portfolio", "perturb", "tpe", "hypotheses", "command")


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
