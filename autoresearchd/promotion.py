"""Promotion: when replicated runs show that a candidate beats the best by more than noise.

Pure, no I/O: the worker drives a rule with real runs, and ``benchmarks/promotion.py``
drives the same rule with simulated ones. A candidate whose selecting run beat the best
(:func:`autoresearchd.judging.improves`) is provisional; a :class:`Trial` then holds what
is known about it and about the incumbent, and the rule says what to do next (a
:class:`Step`): run the candidate again, re-measure the incumbent, keep, or discard.

:class:`SequentialRule` (the default, ``experiment.promotion = "sequential"``):

- The selecting run never counts again: it was picked for being low (the winner's curse).
- The incumbent is judged by its own runs on this track and tier, re-measured first while
  it has fewer than ``incumbent_runs`` of them; the selecting run must beat their mean by
  ``min_improvement`` too, or the candidate stops before any replicate.
- Noise is one standard deviation per track and tier, pooled over every source that was run
  more than once (:func:`pooled_noise`), shrunk toward :data:`PRIOR_SD` by
  :data:`PRIOR_DOF` pseudo-degrees of freedom so a young history errs on the noisy side.
- After fresh replicate ``n``, with ``d`` the incumbent's mean less the fresh mean and
  ``se = sd·sqrt(1/n + 1/m)`` (``m`` incumbent runs): ``d <= 0`` stops at once (a clear
  loser costs one replicate); ``n >= min_replicates`` and ``d > max(min_improvement,
  z·se)`` keeps; ``n = replicates`` discards; otherwise run again. ``z`` is the normal
  quantile of ``1 - significance / replicates``: one-sided, Bonferroni over the looks, so a
  candidate no better than the incumbent is kept with probability below ``significance``.

:class:`MeanRule` (``"mean"``) is the rule this replaces, kept to compare against: the
mean of the selecting run and ``replicates`` more must beat the best's recorded value by
``min_improvement``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from autoresearchd.config import (
    DEFAULT_INCUMBENT_RUNS,
    DEFAULT_MIN_IMPROVEMENT,
    DEFAULT_MIN_REPLICATES,
    DEFAULT_REPLICATES,
    DEFAULT_SIGNIFICANCE,
    ExperimentConfig,
)
from autoresearchd.models import Best, Result, Status

#: The noise a history too young to say otherwise is assumed to have: the high end of the
#: seed-to-seed spread of val_bpb on an idle host.
PRIOR_SD = 0.01
#: How many degrees of freedom the prior weighs, against those the history supplies.
PRIOR_DOF = 8
#: Statuses whose val_bpb is a measurement of its source.
MEASURED = (Status.KEEP, Status.DISCARD)


class Step(StrEnum):
    """What a trial needs next."""

    CANDIDATE = "candidate"  # one more fresh replicate of the candidate
    INCUMBENT = "incumbent"  # one more run of the incumbent's source
    KEEP = "keep"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class Noise:
    """Seed-to-seed standard deviation of val_bpb, and the degrees of freedom behind it."""

    sd: float
    dof: float


@dataclass(frozen=True, slots=True)
class Trial:
    """A provisional candidate's evidence: its selecting run, its fresh replicates, and the
    incumbent's runs. ``incumbent`` None means there is nothing to compare with (no best,
    or an unscored seed); ``remeasurable`` says whether the incumbent's source may be run."""

    selecting: float
    best: float | None
    incumbent: tuple[float, ...] | None
    fresh: tuple[float, ...] = ()
    remeasurable: bool = True

    def with_fresh(self, value: float) -> Trial:
        return replace(self, fresh=(*self.fresh, value))

    def with_incumbent(self, value: float) -> Trial:
        return replace(self, incumbent=(*(self.incumbent or ()), value))


class Rule(Protocol):
    """A promotion rule. This is a Protocol: implement, don't subclass."""

    def next_step(self, trial: Trial) -> Step: ...

    def confirmed(self, trial: Trial) -> float:
        """The val_bpb a keep records."""
        ...


@dataclass(frozen=True, slots=True)
class SequentialRule:
    """The sequential significance rule (see the module docstring)."""

    noise: Noise
    replicates: int = DEFAULT_REPLICATES
    min_replicates: int = DEFAULT_MIN_REPLICATES
    incumbent_runs: int = DEFAULT_INCUMBENT_RUNS
    significance: float = DEFAULT_SIGNIFICANCE
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT

    @property
    def z(self) -> float:
        """The one-sided threshold of each look, in standard errors."""
        looks = max(1, self.replicates - min(self.min_replicates, self.replicates) + 1)
        return statistics.NormalDist().inv_cdf(1.0 - self.significance / looks)

    def next_step(self, trial: Trial) -> Step:
        incumbent = trial.incumbent
        if incumbent is not None and len(incumbent) < self.incumbent_runs and trial.remeasurable:
            return Step.INCUMBENT
        n, enough = len(trial.fresh), min(self.min_replicates, self.replicates)
        if n == 0:
            # The screen again, now against the incumbent's own mean rather than the one
            # value its best recorded: a candidate that only beat a lucky record stops here.
            if incumbent and trial.selecting >= statistics.fmean(incumbent) - self.min_improvement:
                return Step.DISCARD
            return Step.CANDIDATE if self.replicates > 0 else Step.DISCARD
        if incumbent is None:  # nothing to compare with: the replicates only confirm a score
            return Step.KEEP if n >= enough else Step.CANDIDATE
        # An incumbent that cannot be run and has no runs in view counts as one run.
        runs = incumbent or ((trial.best,) if trial.best is not None else ())
        if not runs:
            return Step.DISCARD
        d = statistics.fmean(runs) - statistics.fmean(trial.fresh)
        if d <= 0:
            return Step.DISCARD
        se = self.noise.sd * math.sqrt(1 / n + 1 / len(runs))
        if n >= enough and d > max(self.min_improvement, self.z * se):
            return Step.KEEP
        return Step.DISCARD if n >= self.replicates else Step.CANDIDATE

    def confirmed(self, trial: Trial) -> float:
        return statistics.fmean(trial.fresh)


@dataclass(frozen=True, slots=True)
class MeanRule:
    """The former rule: the mean of the selecting run and ``replicates`` more, against the
    best's recorded value, by ``min_improvement``."""

    replicates: int = 2
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT

    def next_step(self, trial: Trial) -> Step:
        if len(trial.fresh) < self.replicates:
            return Step.CANDIDATE
        best = trial.best
        if best is None or self.confirmed(trial) < best - self.min_improvement:
            return Step.KEEP
        return Step.DISCARD

    def confirmed(self, trial: Trial) -> float:
        return statistics.fmean((trial.selecting, *trial.fresh))


#: Runs one more replicate (or incumbent run) and gives its val_bpb; None when it failed.
Measure = Callable[[], Awaitable[float | None]]


async def settle(
    rule: Rule, trial: Trial, fresh: Measure, incumbent: Measure, stopped: Callable[[], bool]
) -> tuple[Step | None, Trial]:
    """Run the candidate or the incumbent as ``rule`` asks until it keeps or discards.

    The step is None when a fresh replicate failed (a crash ends the trial) or ``stopped``
    says to give up; a failed incumbent run only means it is not run again.
    """
    step = rule.next_step(trial)
    while step in (Step.CANDIDATE, Step.INCUMBENT):
        if stopped():
            return None, trial
        if step is Step.INCUMBENT:
            value = await incumbent()
            trial = (
                replace(trial, remeasurable=False) if value is None else trial.with_incumbent(value)
            )
        else:
            value = await fresh()
            if value is None:
                return None, trial
            trial = trial.with_fresh(value)
        step = rule.next_step(trial)
    return step, trial


def new_trial(
    selecting: float, best: Best | None, measured: dict[str, dict[str, float]], remeasurable: bool
) -> Trial:
    """The trial of a candidate whose selecting run scored ``selecting``, against ``best``
    and the runs ``measured`` (sha256 to result id to val_bpb) holds of its source.

    An unscored best (a hub's seeded baseline) is nothing to compare with.
    """
    incumbent: tuple[float, ...] | None = None
    if best is not None and math.isfinite(best.val_bpb):
        incumbent = tuple(measured.get(best.train_py_sha256, {}).values())
    return Trial(
        selecting=selecting,
        best=None if best is None else best.val_bpb,
        incumbent=incumbent,
        remeasurable=best is not None and remeasurable,
    )


def accepts(step: Step | None, value: float, best: Best | None) -> bool:
    """A keep stands only if it still beats the best as it stands now: another keep may
    have moved it while the replicates ran, and a memory moves a best only for less."""
    return step is Step.KEEP and (best is None or value < best.val_bpb)


def make_rule(experiment: ExperimentConfig, noise: Noise) -> Rule:
    """The rule ``experiment.promotion`` names, with its settings.

    The incumbent needs no more runs than a candidate given every replicate has (its
    selecting run and ``replicates``), so a daemon that replicates little re-measures little.
    """
    if experiment.promotion == "mean":
        return MeanRule(experiment.replicates, experiment.min_improvement)
    enough = min(experiment.min_replicates, experiment.replicates)
    return SequentialRule(
        noise,
        replicates=experiment.replicates,
        min_replicates=enough,
        incumbent_runs=min(experiment.incumbent_runs, 1 + experiment.replicates),
        significance=experiment.significance,
        min_improvement=experiment.min_improvement,
    )


def measurements(results: Iterable[Result], track: str, tier: str) -> dict[str, dict[str, float]]:
    """Each source's measured runs on ``track`` and ``tier``: sha256 to result id to val_bpb."""
    found: dict[str, dict[str, float]] = {}
    for r in results:
        value = r.val_bpb
        if r.track != track or r.vram_tier != tier or r.status not in MEASURED:
            continue
        if value is not None and math.isfinite(value):
            found.setdefault(r.train_py_sha256, {})[r.id] = value
    return found


def pooled_noise(runs: Iterable[Iterable[float]]) -> Noise:
    """The pooled within-source standard deviation over groups of runs of one source each,
    shrunk toward :data:`PRIOR_SD` (see the module docstring)."""
    squares, dof = PRIOR_DOF * PRIOR_SD**2, float(PRIOR_DOF)
    for group in runs:
        values = list(group)
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return Noise(math.sqrt(squares / dof), dof)
