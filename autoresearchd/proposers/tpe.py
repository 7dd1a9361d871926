"""The ``tpe`` strategy: Optuna's TPE fed with every result on the track.

Each proposal rebuilds a small in-memory Optuna study from the collective memory's history:
every result whose train.py differs from the parent only in hyperparameter values becomes
a finished trial (a crash or timeout counts as the worst value seen, since an
out-of-memory batch size is information), and every candidate in flight becomes a running
trial, so TPE's constant liar steers new proposals away from it. Results whose code
differs beyond the parameters are skipped (:mod:`autoresearchd.proposers.history`).
Reading a source is cached by its hash, and the history is capped, so a proposal costs
milliseconds next to a run of minutes.
Optuna is imported lazily: the daemon runs without it when another strategy is configured.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from autoresearchd.errors import ConfigError
from autoresearchd.hyperparams import Param, movable, parse_params
from autoresearchd.literals import Value, same_value
from autoresearchd.models import Candidate, Result, Status
from autoresearchd.proposers.base import (
    DEFAULT_ATTEMPTS,
    EMPTY_CONTEXT,
    IsKnown,
    ProposalContext,
    fresh_candidate,
)
from autoresearchd.proposers.history import HistoryReader
from autoresearchd.proposers.perturb import PerturbProposer

if TYPE_CHECKING:
    import optuna

log = structlog.get_logger(__name__)

#: Newest results a proposal learns from; older ones add little and cost time.
DEFAULT_MAX_HISTORY = 2000
#: Finished trials before TPE models the space; until then it samples at random.
DEFAULT_STARTUP_TRIALS = 10
#: Samples TPE scores per proposal (Optuna's default is 24). Fewer make each pick less
#: greedy, so the search is caught in a wrong basin less often: on ``benchmarks/search.py``
#: 12 took 8 workers from about 73% to 75% efficiency over 400 seeds, and 8 was no better.
EI_CANDIDATES = 12
_FAILED = (Status.CRASH, Status.TIMEOUT)


def import_optuna() -> Any:
    """The optuna module, or a :class:`ConfigError` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "optuna is not installed (pip install 'autoresearchd[search]')",
            key="proposer.strategy",
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --- the search space -----------------------------------------------------------------------


class SearchSpace:
    """Optuna distributions for the movable parameters, and conversion both ways.

    ``pow2`` parameters are searched by exponent and ``choice`` parameters as categories;
    ``fixed`` ones are left out and keep the parent's value.
    """

    def __init__(self, params: Mapping[str, Param], optuna: Any) -> None:
        self.params = {name: p for name, p in params.items() if p.space.kind != "fixed"}
        self.distributions: dict[str, Any] = {
            name: _distribution(param, optuna) for name, param in self.params.items()
        }

    def encode(self, values: Mapping[str, Value]) -> dict[str, Any] | None:
        """Trial parameters for ``values``, or None if one lies outside its space."""
        encoded: dict[str, Any] = {}
        for name, param in self.params.items():
            value = values.get(name)
            if value is None or not param.space.contains(value):
                return None
            encoded[name] = _exponent(value) if param.space.kind == "pow2" else value
        return encoded

    def decode(self, trial_params: Mapping[str, Any]) -> dict[str, Value]:
        decoded: dict[str, Value] = {}
        for name, param in self.params.items():
            raw = trial_params[name]
            decoded[name] = _decode(param, raw)
        return decoded


def _distribution(param: Param, optuna: Any) -> Any:
    space, dist = param.space, optuna.distributions
    if space.kind in ("log", "float"):
        return dist.FloatDistribution(space.low, space.high, log=space.kind == "log")
    if space.kind in ("int", "pow2"):
        return dist.IntDistribution(math.ceil(space.low or 0), math.floor(space.high or 0))
    return dist.CategoricalDistribution(space.choices)


def _decode(param: Param, raw: Any) -> Value:
    if param.space.kind == "pow2":
        return 2 ** int(raw)
    if param.space.kind in ("log", "float"):
        return _short(float(raw), param)
    return raw


def _short(value: float, param: Param) -> float:
    """Three significant digits when that stays in the space: readable descriptions."""
    rounded = float(f"{value:.3g}")
    return rounded if param.space.contains(rounded) else value


def _exponent(value: Value) -> int:
    return int(value).bit_length() - 1 if isinstance(value, int) else 0


# --- the proposer ---------------------------------------------------------------------------


class TpeProposer:
    """Samples all movable parameters jointly from a TPE model of the track's history.

    When TPE keeps landing on known candidates (small discrete spaces), it falls back to
    perturbing the parent, so the worker is never left without a candidate for long.
    """

    name = "tpe"
    uses_history = True

    def __init__(
        self,
        rng: random.Random | None = None,
        baseline: str | None = None,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        startup_trials: int = DEFAULT_STARTUP_TRIALS,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self._optuna = import_optuna()
        self._rng = rng or random.Random()
        self._spaces: dict[str, Param] | None = parse_params(baseline) if baseline else None
        self.max_history = max_history
        self.startup_trials = startup_trials
        self.attempts = attempts
        self.history = HistoryReader()
        self._proposed: set[str] = set()
        self._fallback = PerturbProposer(rng=self._rng, baseline=baseline)
        self._fallback.name = self.name

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        params = parse_params(parent.source, spaces_from=self._spaces)
        space = SearchSpace(movable(params, context.device), self._optuna)
        if not space.params:
            return None
        study = await anyio.to_thread.run_sync(self._study, parent, space, context)
        for _ in range(self.attempts):
            values = await anyio.to_thread.run_sync(self._ask, study, space)
            changes = {n: v for n, v in values.items() if not same_value(v, params[n].value)}
            fresh = await fresh_candidate(
                self.name, parent, params, changes, self._proposed, is_known
            )
            if fresh is not None:
                return fresh
        log.info("tpe_fallback", parent=parent.sha256[:12], attempts=self.attempts)
        return await self._fallback.propose(parent, is_known, context)

    def _study(self, parent: Candidate, space: SearchSpace, context: ProposalContext) -> Any:
        """A fresh study holding the history and the in-flight candidates (runs in a thread)."""
        reading = self.history.reading(parent.source, parent.sha256)
        skeleton = reading.skeleton if reading else ""
        # Other tiers train under other budgets and memory: their val_bpb is on another scale.
        results = [r for r in context.results if not context.tier or r.vram_tier == context.tier]
        trials = self.trials(skeleton, space, results[: self.max_history])
        running = self._running(skeleton, space, context.in_flight)
        optuna = self._optuna
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self._rng.randrange(2**31),
                n_startup_trials=self.startup_trials,
                n_ei_candidates=EI_CANDIDATES,
                multivariate=True,
                constant_liar=True,
            )
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials(trials + running)
        return study

    def trials(
        self, skeleton: str, space: SearchSpace, results: Sequence[Result]
    ) -> list[optuna.trial.FrozenTrial]:
        """Finished trials for the results that map onto ``space``; failures score worst."""
        create = self._optuna.trial.create_trial
        found: list[tuple[dict[str, Any], float | None]] = []
        for result in results:
            if result.status not in (Status.KEEP, Status.DISCARD, *_FAILED):
                continue  # invalid: refused by policy, says nothing about the objective
            values = self.history.values(skeleton, result.train_py, result.train_py_sha256)
            encoded = space.encode(values) if values is not None else None
            if encoded is not None:
                # None scores worst: a crash, a timeout, or a run stopped early as hopeless.
                value = result.val_bpb if result.status not in _FAILED else None
                found.append((encoded, value))
        finite = [v for _, v in found if v is not None and math.isfinite(v)]
        worst = max(finite, default=None)
        return [
            create(params=p, distributions=space.distributions, value=v if v is not None else worst)
            for p, v in found
            if v is not None or worst is not None
        ]

    def _running(
        self, skeleton: str, space: SearchSpace, sources: Sequence[str]
    ) -> list[optuna.trial.FrozenTrial]:
        optuna = self._optuna
        running = []
        for source in sources:
            values = self.history.values(skeleton, source)
            encoded = space.encode(values) if values is not None else None
            if encoded is not None:
                running.append(
                    optuna.trial.create_trial(
                        params=encoded,
                        distributions=space.distributions,
                        state=optuna.trial.TrialState.RUNNING,
                    )
                )
        return running

    def _ask(self, study: Any, space: SearchSpace) -> dict[str, Value]:
        # A sample we do not run stays RUNNING, so the next ask is repelled from it too.
        trial = study.ask(space.distributions)
        return space.decode(trial.params)
