"""Promotion: when replicated runs show that a candidate beats the best by more than noise.

Pure, no I/O: the worker drives a rule with real runs, and ``benchmarks/promotion.py``
drives the same rule with simulated ones. A candidate whose selecting run beat the best
(:func:`autoresearchd.judging.improves`) is provisional; a :class:`Trial` then holds what
is known about it and about the incumbent, and the rule says what to do next (a
:class:`Step`): run the candidate again, re-measure the incumbent, keep, or discard.

:class:`SequentialRule` (the default, ``experiment.promotion = "sequential"``), a
group-sequential test:

- The selecting run never counts again: it was picked for being low (the winner's curse).
- The incumbent is judged by its own runs on this track and tier, re-measured first while
  it has fewer than ``incumbent_runs`` of them; the selecting run must beat their mean by
  ``min_improvement`` too, or the candidate stops before any replicate.
- Noise is one standard deviation per track and tier, pooled over every source that was run
  more than once (:func:`pooled_noise`), shrunk toward :data:`PRIOR_SD` by
  :data:`PRIOR_DOF` pseudo-degrees of freedom so a young history errs on the noisy side.
- After fresh replicate ``n``, with ``d`` the incumbent's mean less the fresh mean and
  ``z = d / (sd·sqrt(1/n + 1/m))`` (``m`` incumbent runs): ``d <= 0`` stops at once;
  from ``n = min_replicates`` on, ``z`` above the look's boundary (and ``d >
  min_improvement``) keeps; ``n = replicates`` discards; a conditional power (the chance
  of crossing the last boundary if the effect is what the replicates show) below
  :data:`FUTILITY` discards; otherwise run again. The boundaries spend ``significance``
  over the looks by information fraction (``alpha·t**3``, :func:`spending_bounds`), so a
  candidate no better than the incumbent is kept with probability ``significance`` over
  all looks together, and the last look's boundary stays near a single test's; they are
  widened to Student-t quantiles for the noise's degrees of freedom. The futility stop
  only ever discards, so it spends no error.

:class:`BonferroniRule` (``"bonferroni"``) is the rule ``"sequential"`` replaced, kept to
compare against: a fixed boundary ``z = Φ⁻¹(1 - significance / looks)`` at every look.

:class:`MeanRule` (``"mean"``) is the rule this replaces, kept to compare against: the
mean of the selecting run and ``replicates`` more must beat the best's recorded value by
``min_improvement``.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
#: Below this chance of reaching the last look's boundary (if the effect is what the
#: replicates so far show) a candidate stops: a likely loser costs few replicates.
FUTILITY = 0.05
#: The alpha-spending function's power: ``alpha·t**3`` spends little at early looks (as
#: O'Brien and Fleming's boundary does), keeping the last look's boundary near a single test's.
SPENDING_POWER = 3.0
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


def _opening(
    trial: Trial, *, incumbent_runs: int, min_improvement: float, replicates: int, enough: int
) -> Step | tuple[float, ...] | None:
    """The steps both significance rules share: re-measure the incumbent first, screen the
    selecting run against its mean, confirm a score with nothing to compare it to. Else the
    incumbent's runs to compare the fresh replicates with (None: nothing to compare with)."""
    incumbent = trial.incumbent
    if incumbent is not None and len(incumbent) < incumbent_runs and trial.remeasurable:
        return Step.INCUMBENT
    n = len(trial.fresh)
    if n == 0:
        # The screen again, now against the incumbent's own mean rather than the one
        # value its best recorded: a candidate that only beat a lucky record stops here.
        if incumbent and trial.selecting >= statistics.fmean(incumbent) - min_improvement:
            return Step.DISCARD
        return Step.CANDIDATE if replicates > 0 else Step.DISCARD
    if incumbent is None:  # nothing to compare with: the replicates only confirm a score
        return Step.KEEP if n >= enough else Step.CANDIDATE
    # An incumbent that cannot be run and has no runs in view counts as one run.
    runs = incumbent or ((trial.best,) if trial.best is not None else ())
    return runs or Step.DISCARD


@dataclass(frozen=True, slots=True)
class SequentialRule:
    """The group-sequential rule with an alpha-spending boundary (see the module docstring)."""

    noise: Noise
    replicates: int = DEFAULT_REPLICATES
    min_replicates: int = DEFAULT_MIN_REPLICATES
    incumbent_runs: int = DEFAULT_INCUMBENT_RUNS
    significance: float = DEFAULT_SIGNIFICANCE
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    futility: float = FUTILITY

    @property
    def enough(self) -> int:
        return max(1, min(self.min_replicates, self.replicates))

    def bounds(self, m: int) -> tuple[float, ...]:
        """The boundary, in standard errors, at each look ``n = enough..replicates`` against
        an incumbent of ``m`` runs, widened for a noise estimate of finite dof."""
        looks = range(self.enough, self.replicates + 1)
        info = tuple(information(n, m) for n in looks)
        return tuple(student(z, self.noise.dof) for z in spending_bounds(info, self.significance))

    def next_step(self, trial: Trial) -> Step:
        opened = _opening(
            trial,
            incumbent_runs=self.incumbent_runs,
            min_improvement=self.min_improvement,
            replicates=self.replicates,
            enough=self.enough,
        )
        if not isinstance(opened, tuple):
            return Step.DISCARD if opened is None else opened
        n, m = len(trial.fresh), len(opened)
        d = statistics.fmean(opened) - statistics.fmean(trial.fresh)
        if d <= 0:
            return Step.DISCARD
        if n < self.enough:
            return Step.CANDIDATE
        bounds = self.bounds(m)
        z = d / (self.noise.sd * math.sqrt(1 / n + 1 / m))
        if z > bounds[n - self.enough] and d > self.min_improvement:
            return Step.KEEP
        if n >= self.replicates:
            return Step.DISCARD
        final = information(self.replicates, m)
        if conditional_power(z, information(n, m), final, bounds[-1]) < self.futility:
            return Step.DISCARD
        return Step.CANDIDATE

    def confirmed(self, trial: Trial) -> float:
        return statistics.fmean(trial.fresh)


@dataclass(frozen=True, slots=True)
class BonferroniRule:
    """The former sequential rule, kept to compare against: a fixed boundary ``z`` at every
    look, Bonferroni over the looks; only a fresh mean no better than the incumbent's stops
    a candidate early."""

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
        enough = min(self.min_replicates, self.replicates)
        opened = _opening(
            trial,
            incumbent_runs=self.incumbent_runs,
            min_improvement=self.min_improvement,
            replicates=self.replicates,
            enough=enough,
        )
        if not isinstance(opened, tuple):
            return Step.DISCARD if opened is None else opened
        n = len(trial.fresh)
        d = statistics.fmean(opened) - statistics.fmean(trial.fresh)
        if d <= 0:
            return Step.DISCARD
        se = self.noise.sd * math.sqrt(1 / n + 1 / len(opened))
        if n >= enough and d > max(self.min_improvement, self.z * se):
            return Step.KEEP
        return Step.DISCARD if n >= self.replicates else Step.CANDIDATE

    def confirmed(self, trial: Trial) -> float:
        return statistics.fmean(trial.fresh)


def information(n: int, m: int) -> float:
    """The information (in units of the noise variance) in the difference between the
    means of ``n`` fresh replicates and ``m`` incumbent runs."""
    return 1.0 / (1.0 / n + 1.0 / m)


def _upper(x: float) -> float:
    """P(Z > x) for a standard normal Z, accurate far into the tail."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


@functools.lru_cache(maxsize=1024)
def spending_bounds(info: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """One-sided group-sequential boundaries (in standard errors) for looks at the
    increasing informations ``info``, spending ``alpha·t**SPENDING_POWER`` of the error
    by information fraction ``t``, so that a candidate no better than the incumbent
    crosses at any look with probability ``alpha``.

    The statistic at the looks is a Gaussian random walk in the information (the
    incumbent's mean is shared by every look, which the information accounts for), so the
    boundaries follow from the recursive numerical integration of Armitage, McPherson and
    Rowe: the density of the score ``z·sqrt(I)`` below the boundaries, carried from look
    to look on a grid fine against each step's spread.
    """
    if not info:
        return ()
    total, spent, previous = info[-1], 0.0, 0.0
    points: list[float] = [0.0]
    weights: list[float] = [1.0]  # a point mass at 0 before the first look
    found: list[float] = []
    for current in info:
        step = math.sqrt(current - previous)
        target = alpha * min(1.0, current / total) ** SPENDING_POWER - spent
        low, high = -10.0 * math.sqrt(current), 60.0 * math.sqrt(current)
        for _ in range(64):  # bisection: crossing falls as the boundary rises
            middle = (low + high) / 2
            crossed = _crossing(middle, points, weights, step)
            low, high = (middle, high) if crossed > target else (low, middle)
        spent += _crossing(high, points, weights, step)
        found.append(high / math.sqrt(current))
        # The density of the score that did not cross, for the next look.
        bottom = -8.0 * math.sqrt(current)
        width = min(step / 6, (high - bottom) / 100)
        grid = [bottom + (j + 0.5) * width for j in range(int((high - bottom) / width) + 1)]
        scale = width / (step * math.sqrt(2 * math.pi))
        weights = [
            scale
            * sum(
                w * math.exp(-0.5 * ((s - u) / step) ** 2)
                for u, w in zip(points, weights, strict=True)
            )
            for s in grid
        ]
        points, previous = grid, current
    return tuple(found)


def _crossing(bound: float, points: list[float], weights: list[float], step: float) -> float:
    """The chance that a score now at ``points`` (with ``weights``) crosses ``bound`` after
    a normal step of spread ``step``."""
    return sum(w * _upper((bound - u) / step) for u, w in zip(points, weights, strict=True))


def student(z: float, dof: float) -> float:
    """The Student-t quantile with ``dof`` degrees of freedom at the normal quantile ``z``
    (Cornish-Fisher, two terms): a noise estimated from few runs widens the boundary."""
    if not math.isfinite(dof) or dof <= 0:
        return z
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def conditional_power(z: float, now: float, final: float, bound: float) -> float:
    """The chance of crossing ``bound`` at the last look (information ``final``) if the
    effect is what the replicates so far (``z`` at information ``now``) suggest."""
    if final <= now:
        return 1.0 if z > bound else 0.0
    score, drift = z * math.sqrt(now), z / math.sqrt(now)
    needed = bound * math.sqrt(final) - score - drift * (final - now)
    return _upper(needed / math.sqrt(final - now))


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


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether confirmations beat an incumbent: the statistic and the boundary it met."""

    better: bool
    z: float
    bound: float
    mean: float


def confirms(
    runs: Sequence[float],
    incumbent: float,
    incumbent_runs: int,
    noise: Noise,
    *,
    looks: range,
    significance: float,
) -> Verdict:
    """Whether ``runs`` (fresh confirmations of one source) beat an incumbent measured
    ``incumbent_runs`` times with mean ``incumbent``, on the same group-sequential
    boundary the daemon's rule uses: its looks at ``looks`` confirmations (one look per
    count, so a claim judged again as confirmations arrive spends no extra error)."""
    n = len(runs)
    mean = statistics.fmean(runs) if runs else math.inf
    if n == 0 or not looks or n < looks.start:
        return Verdict(False, 0.0, math.inf, mean)
    m = max(1, incumbent_runs)
    info = tuple(information(k, m) for k in looks)
    bounds = [student(z, noise.dof) for z in spending_bounds(info, significance)]
    bound = bounds[min(n, looks[-1]) - looks.start]
    z = (incumbent - mean) / (noise.sd * math.sqrt(1 / n + 1 / m))
    return Verdict(z > bound, z, bound, mean)


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
    kind = BonferroniRule if experiment.promotion == "bonferroni" else SequentialRule
    return kind(
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
