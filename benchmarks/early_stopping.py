"""Early stopping: GPU-hours per real improvement found, with and without it, per landscape.

Simulated training runs whose learning curve depends on their hyperparameters, fed report by
report through the daemon's own :class:`autoresearchd.early_stopping.LearningCurve`, judged
by its own rule (:func:`~autoresearchd.calibration.calibrate` on the curves stored so far,
:func:`~autoresearchd.early_stopping.make_judge` against the incumbent's mean val_bpb).
Nothing here reimplements the rule.

Four landscape families, each reported on its own: ``scaling`` (below); ``powerlaw``
(``benchmarks/powerlaw_curves.py``: mixtures of the parametric learning-curve shapes of the
curve-extrapolation literature under ``train.py``'s own schedule, with heavy-tailed,
autocorrelated report noise, loss spikes and crashes; its formula was fixed before the rule
was first run on it); and ``heldout`` (``benchmarks/heldout_curves.py``: a compute-bound
Chinchilla loss with a critical batch size under a cosine schedule, kept out of the rule's
development and first run on the rule after it was fixed); and ``real``
(``benchmarks/real_curves.py``: the training curves of a real MLP on scikit-learn's bundled
digits under a warm-down tied to the budget, held out likewise). The rule must meet its goal
on every family.

The ``scaling`` landscape (a loss model in the spirit of scaling laws, written alongside the
rule's first version):

- ``lr`` (1e-4..1e-1, log), ``warmdown`` (0.05..0.9), ``width`` (64..1024, log) and ``batch``
  (2**14..2**21 tokens, log). The schedule warms up over 2 % of the budget, holds, and decays
  linearly to 10 % over the last ``warmdown`` of it.
- Loss at fraction ``f``: ``E + capacity(width) + optimisation(S(f)) + temperature(lr(f))
  + instability``. ``S(f)`` is the learning done so far: the integral of the learning rate
  times the throughput, which falls with width and rises a little with batch. The
  temperature term is proportional to the current learning rate over sqrt(batch): a high-LR
  run sits high mid-run and drops in its warm-down, so it looks worse at half the budget
  and ends better (the late bloomers). Past a critical LR (lower for wider models) the
  loss carries a growing penalty, and past 2.5 times it the run diverges and crashes.
- A run adds a seed offset N(0, 0.004) to its curve and its final val_bpb, and every logged
  step N(0, 0.04) of batch noise; a run logs 240 steps.

The search: a daemon's loop on one GPU. The baseline first, then candidates: 70 % perturb one
or two parameters of the incumbent, 30 % a uniform draw. A candidate whose first run beats the
incumbent's mean by ``min_improvement`` gets two replicates (never stopped) and is kept when
their mean beats the incumbent's by more than noise. A run costs 30 s of start-up plus the
share of its 300 s budget it trained. A *real improvement* is a keep whose true (noise-free)
val_bpb is below the previous incumbent's true value. A *true improvement* offered is a
candidate whose true val_bpb beats the incumbent's by ``min_improvement``; it is *lost* when
its first run was stopped early.

Both arms (``off`` and ``auto``) see the same number of candidates from the same seeds, each
arm starting with no stored curves (so early stopping stays off until its calibration
allows it). Printed per family: per arm, runs, stops, GPU-hours, real improvements and the
final incumbent's true value; where in the budget the stops fell; then the share of true
improvements lost, the ratio of GPU-hours spent, and the ratio of GPU-hours per real
improvement, each with a 90 % bootstrap interval over the seeds (both arms of a seed
resampled together); and a bound, from a third arm that knows each candidate's true val_bpb
and stops, at the rule's first judged bin, every one truly worse than the incumbent's by 2
seed deviations, once the rule could first be on: what no rule that reads curves can beat
by much. Beside the count of improvements, their worth: the incumbent's true val_bpb in each
arm once it had spent what the seed's thriftiest arm spent (an arm that stops runs finishes
its candidates on fewer GPU-hours, and a count of improvements does not say how large they
were). Last, the worst family's ratio and loss share. Goal: ratio >= 1.5 with <= 5 % of
true improvements lost, on every family.

With ``--proposer portfolio`` the daemon's default proposer draws the candidates in place of
the 70/30 mix (``benchmarks/portfolio_draws.py``), reading each arm's own runs as a track's
results (a stopped run with no val_bpb), so the arms no longer meet the same candidates;
another arm, ``ranked``, runs the rule with the stopped runs told to the proposer as crashes,
so that it ranks them among the rest (the daemon's proposer leaves them out).

Each stored curve carries its run's hyperparameters (each on 0..1 over its declared space, as
a result's train.py gives them to the daemon), and each judged run its own. With
``--compare-curve-only`` a fourth arm, ``curve``, runs the rule on curves stored without
hyperparameters (the rule before it read them) against the same candidates, and its figures
and the ratio of its saving to the ``auto`` arm's (with a 90 % interval, the arms of a seed
resampled together) are printed beside them. Each ``--compare-shapes SHAPES`` adds an arm
(``sh1``, ``sh2``, ... in the order given) whose fits read, in place of the daemon's
:data:`~autoresearchd.calibration.SHAPES`, the terms named (comma-separated: ``square`` and
``product`` with the loss at the bin, nonlinear hyperparameter terms; ``history``, more of
the curve; ``none`` for the three bins and linear terms alone), printed and compared with
``auto`` likewise: a candidate rule measured on the same seeds as the current one.
Usage: ``python benchmarks/early_stopping.py [--seeds N] [--candidates N]
[--family all|scaling|powerlaw|heldout|real] [--compare-curve-only] [--compare-shapes
SHAPES ...] [--proposer mix|portfolio]`` (about three minutes on
one core for the first three; ``real`` trains each configuration it meets once, then reads it
from its cache).
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import heldout_curves  # sibling scripts of this one
import powerlaw_curves
import real_curves
import structlog
from portfolio_draws import PortfolioDraws

from autoresearchd.calibration import (
    FIRST_BIN,
    MIN_CURVES,
    SHAPES,
    Calibration,
    Shape,
    calibrate,
)
from autoresearchd.curves import BINS, Coordinates, Sample, bins_of
from autoresearchd.early_stopping import Judge, LearningCurve, make_judge
from autoresearchd.progress import Progress

BUDGET_S = 300.0
STARTUP_S = 30.0
STEPS = 240
SEED_SD = 0.004
STEP_SD = 0.04
MIN_IMPROVEMENT = 0.001
#: Completed runs between two recalibrations (a daemon recalibrates about once a minute).
RECALIBRATE_EVERY = 5
SPACE = {"lr": (-4.0, -1.0), "warmdown": (0.05, 0.9), "width": (6.0, 10.0), "batch": (14.0, 21.0)}
TEMPERATURE = 40.0
LAG = 0.1  # of the budget
BASELINE = {"lr": -3.5, "warmdown": 0.2, "width": 7.0, "batch": 15.0}


# -- the landscape ---------------------------------------------------------------------------


def schedule(u: float, warmdown: float) -> float:
    if u < 0.02:
        return (u + 1e-3) / 0.021
    if u > 1.0 - warmdown:
        remaining = (1.0 - u) / warmdown
        return remaining + (1.0 - remaining) * 0.1
    return 1.0


@dataclass(frozen=True)
class Landscape:
    """The noise-free loss of a configuration at each fraction of its budget."""

    theta: dict[str, float]

    @property
    def critical_lr(self) -> float:
        width, batch = 2.0 ** self.theta["width"], 2.0 ** self.theta["batch"]
        return float(0.02 * (256 / width) ** 0.5 * (batch / 2**17) ** 0.25)

    @property
    def diverges(self) -> bool:
        return 10 ** self.theta["lr"] > 2.5 * self.critical_lr

    def curve(self, fractions: list[float]) -> list[float]:
        lr, warmdown = 10 ** self.theta["lr"], self.theta["warmdown"]
        width, batch = 2 ** self.theta["width"], 2 ** self.theta["batch"]
        throughput = (256 / width) ** 1.0 * (batch / 2**17) ** 0.15
        capacity = 0.9 * (width / 64) ** -0.45
        instability = 2.0 * max(0.0, lr / self.critical_lr - 1.0) ** 2
        losses, learned, last, temperature = [], 0.0, 0.0, 0.0
        for f in fractions:
            # The learning done so far: the schedule's integral, a midpoint step at a time.
            lr_now = lr * schedule((last + f) / 2, warmdown)
            learned += lr_now * throughput * (f - last) * 4000
            # The loss follows the learning rate's noise with a lag: a warm-down too short
            # to let it settle ends the run above where a longer one would.
            target = TEMPERATURE * lr_now / math.sqrt(batch / 2**14)
            temperature += (target - temperature) * (1 - math.exp(-(f - last) / LAG))
            last = f
            optimisation = 3.0 / (1.0 + learned) ** 0.6
            losses.append(1.0 + capacity + optimisation + temperature + instability)
        return losses

    def final(self) -> float:
        return self.curve([i / STEPS for i in range(1, STEPS + 1)])[-1]


Space = dict[str, tuple[float, float]]


def sample_theta(rng: random.Random, space: Space) -> dict[str, float]:
    return {name: rng.uniform(low, high) for name, (low, high) in space.items()}


def perturb(theta: dict[str, float], rng: random.Random, space: Space) -> dict[str, float]:
    child = dict(theta)
    for name in rng.sample(sorted(space), rng.choice((1, 2))):
        low, high = space[name]
        child[name] = min(high, max(low, child[name] + rng.gauss(0.0, 0.15 * (high - low))))
    return child


# -- one run through the daemon's own curve and rule ----------------------------------------------


@dataclass
class Run:
    final: float | None  # None: crashed or stopped early
    fraction: float  # of the budget it trained
    curve: tuple[tuple[float, float], ...]
    stopped: bool = False
    oracle: bool = False  # stopped by the oracle arm, which knows the truth

    @property
    def gpu_s(self) -> float:
        return STARTUP_S + self.fraction * BUDGET_S


def simulate(landscape: Landscape, rng: random.Random, judge: Judge | None) -> Run:
    fractions = [i / STEPS for i in range(1, STEPS + 1)]
    truth = landscape.curve(fractions)
    offset = rng.gauss(0.0, SEED_SD)
    crash_at = rng.uniform(0.1, 0.6) if landscape.diverges else math.inf
    curve = LearningCurve(BUDGET_S, (lambda: judge) if judge is not None else None)
    for f, loss in zip(fractions, truth, strict=True):
        if f >= crash_at:  # the loss explodes; the script exits on its own
            return Run(None, f, curve.points())
        curve.add(Progress(loss + offset + rng.gauss(0.0, STEP_SD), f))
        if curve.stopped:
            return Run(None, f, curve.points(), stopped=True)
    return Run(truth[-1] + offset, 1.0, curve.points())


def simulate_traced(
    family: ModuleType, theta: dict[str, float], rng: random.Random, judge: Judge | None
) -> Run:
    """One run of a family module that draws whole traces (``powerlaw``, ``heldout``)."""
    trace = family.run(theta, rng)
    curve = LearningCurve(BUDGET_S, (lambda: judge) if judge is not None else None)
    fraction = 0.0
    for fraction, loss in trace.points:
        curve.add(Progress(loss, fraction))
        if curve.stopped:
            return Run(None, fraction, curve.points(), stopped=True)
    if trace.final is None:  # crashed after its last report
        return Run(None, min(1.0, fraction + 1 / family.REPORTS), curve.points())
    return Run(trace.final, 1.0, curve.points())


def traced(family: ModuleType) -> Family:
    return Family(
        family.NAME,
        family.SPACE,
        family.BASELINE,
        family.SEED_SD,
        family.true_final,
        functools.partial(simulate_traced, family),
    )


@dataclass(frozen=True)
class Family:
    """A landscape: its search space, baseline, truth and how one run of it goes."""

    name: str
    space: dict[str, tuple[float, float]]
    baseline: dict[str, float]
    seed_sd: float  # of a final between seeds, for the keep rule
    true_final: Callable[[dict[str, float]], float]  # inf where every seed diverges
    simulate: Callable[[dict[str, float], random.Random, Judge | None], Run]


FAMILIES = {
    "scaling": Family(
        "scaling",
        SPACE,
        BASELINE,
        SEED_SD,
        lambda t: math.inf if Landscape(t).diverges else Landscape(t).final(),
        lambda t, rng, judge: simulate(Landscape(t), rng, judge),
    ),
    "powerlaw": traced(powerlaw_curves),
    "heldout": traced(heldout_curves),
    "real": traced(real_curves),
}


# -- the search ------------------------------------------------------------------------------


@dataclass
class Arm:
    early_stopping: bool
    oracle: bool = False  # stops by the truth, not the rule: a bound on what a rule saves
    hyperparams: bool = True  # False: the rule reads the curve alone, as it did before
    shapes: tuple[Shape, ...] = SHAPES  # the nonlinear hyperparameter terms its fits may read
    # Who draws the candidates: "mix" (perturb or uniform), "portfolio" (the daemon's default
    # proposer, reading every run), "ranked" (the same, told the stopped runs were crashes).
    proposer: str = "mix"
    gpu_s: float = 0.0
    runs: int = 0
    stops: int = 0
    stopped_at: list[float] = field(default_factory=list)  # the fraction of each stop
    real_improvements: int = 0
    offered: int = 0  # true improvements offered as candidates
    lost: int = 0  # ... of which stopped early
    samples: list[Sample] = field(default_factory=list)
    calibration: Calibration | None = None
    completed_since: int = 0
    final_true: float = math.nan
    # (GPU-seconds spent, the incumbent's true val_bpb from then on), at each new incumbent.
    trace: list[tuple[float, float]] = field(default_factory=list)

    def true_at(self, gpu_s: float) -> float:
        """The incumbent's true val_bpb once ``gpu_s`` GPU-seconds were spent."""
        return [best for spent, best in self.trace if spent <= gpu_s][-1]


def normalised(theta: dict[str, float], space: Space) -> Coordinates:
    """A configuration as a result stores it: each value on 0..1 over its declared space."""
    return tuple(
        (name, (theta[name] - low) / (high - low)) for name, (low, high) in sorted(space.items())
    )


@dataclass
class MixDraws:
    """The default candidates: 70 % perturb the incumbent, 30 % a uniform draw, from the
    run's own random stream, so that every arm of a seed meets the same candidates."""

    space: Space
    rng: random.Random

    def record(
        self, theta: dict[str, float], final: float | None, stopped_at: float | None
    ) -> None:
        """Nothing: these draws read no history."""

    def draw(self, best: dict[str, float]) -> dict[str, float]:
        if self.rng.random() < 0.7:
            return perturb(best, self.rng, self.space)
        return sample_theta(self.rng, self.space)


def drawer(arm: Arm, seed: int, rng: random.Random, space: Space) -> MixDraws | PortfolioDraws:
    if arm.proposer == "mix":
        return MixDraws(space, rng)
    return PortfolioDraws(space, random.Random(seed), ranked=arm.proposer == "ranked")


def store(arm: Arm, sample: Sample) -> None:
    """A finished run's curve kept for the calibration, recalibrating every few runs."""
    arm.samples.append(sample)
    arm.completed_since += 1
    if arm.completed_since >= RECALIBRATE_EVERY:
        # An arm that never judges a run needs no calibration (it draws nothing).
        arm.calibration = calibrate(arm.samples, arm.shapes) if arm.early_stopping else None
        arm.samples = arm.samples[-400:]
        arm.completed_since = 0


def search(arm: Arm, seed: int, candidates: int, family: Family) -> None:
    rng = random.Random(seed)
    draws = drawer(arm, seed, rng, family.space)
    best_theta = dict(family.baseline)
    best_true = family.true_final(best_theta)
    arm.trace.append((0.0, best_true))
    clock = 0

    def run(theta: dict[str, float], stoppable: bool) -> Run:
        nonlocal clock
        judge = None
        params = normalised(theta, family.space) if arm.hyperparams else ()
        if stoppable and arm.early_stopping and arm.calibration is not None:
            incumbent = statistics.fmean(best_finals)
            judge = make_judge(arm.calibration, incumbent, len(best_finals), rng, params)
        result = family.simulate(theta, rng, judge)
        draws.record(theta, result.final, result.fraction if result.stopped else None)
        arm.runs, arm.gpu_s, clock = arm.runs + 1, arm.gpu_s + result.gpu_s, clock + 1
        arm.stops += result.stopped
        if result.stopped:
            arm.stopped_at.append(result.fraction)
        if result.final is not None:
            key = repr(sorted(theta.items()))
            store(arm, Sample(key, bins_of(result.curve), result.final, clock, params))
        return result

    best_finals: list[float] = []
    baseline = [run(best_theta, False) for _ in range(2)]
    best_finals = [r.final for r in baseline if r.final is not None]
    for _ in range(candidates):
        theta = draws.draw(best_theta)
        true = family.true_final(theta)
        offered = true < best_true - MIN_IMPROVEMENT
        first = oracle_stop(arm, family, true, best_true) or run(theta, True)
        if first.oracle:
            draws.record(theta, None, first.fraction)
        arm.offered += offered
        arm.lost += offered and first.stopped
        incumbent = statistics.fmean(best_finals)
        if first.final is None or first.final >= incumbent - MIN_IMPROVEMENT:
            continue
        fresh = [run(theta, False) for _ in range(2)]
        finals = [r.final for r in fresh if r.final is not None]
        if len(finals) < 2:
            continue
        se = family.seed_sd * math.sqrt(1 / len(finals) + 1 / len(best_finals))
        if incumbent - statistics.fmean(finals) > max(MIN_IMPROVEMENT, 2.5 * se):
            arm.real_improvements += true < best_true
            best_theta, best_true = theta, true
            arm.trace.append((arm.gpu_s, true))
            best_finals = [first.final, *finals]
    arm.final_true = best_true


#: The oracle stops, at this fraction of the budget (the rule's first judged bin), every
#: candidate whose true val_bpb is worse than the incumbent's by this many seed deviations,
#: once the rule could first be on: what no rule that reads curves can beat by much.
ORACLE_FRACTION = (FIRST_BIN + 1) / BINS
ORACLE_SD = 2.0


def oracle_stop(arm: Arm, family: Family, true: float, best_true: float) -> Run | None:
    """The oracle arm's stop of a candidate it knows to be worse; None: it runs as usual."""
    if not arm.oracle or arm.runs < MIN_CURVES or true <= best_true + ORACLE_SD * family.seed_sd:
        return None
    stopped = Run(None, ORACLE_FRACTION, (), stopped=True, oracle=True)
    arm.runs, arm.gpu_s, arm.stops = arm.runs + 1, arm.gpu_s + stopped.gpu_s, arm.stops + 1
    return stopped


COUNTS = ("gpu_s", "runs", "stops", "real_improvements", "offered", "lost")
BOOTSTRAP = 2000


def figures(seeds: list[dict[str, Arm]], rule: str = "auto") -> tuple[float, float, float, float]:
    """Over the seeds given: GPU-hours per real improvement of the ``off`` arm and of the
    ``rule`` arm, the ratio off / rule, and the share of true improvements ``rule`` stopped."""
    total = {name: Arm(name != "off") for name in ("off", rule)}
    for arms in seeds:
        for name in total:
            arm = arms[name]
            for attr in COUNTS:
                setattr(total[name], attr, getattr(total[name], attr) + getattr(arm, attr))
    per = {n: a.gpu_s / 3600 / max(1, a.real_improvements) for n, a in total.items()}
    lost = total[rule].lost / max(1, total[rule].offered)
    return per["off"], per[rule], per["off"] / per[rule], lost


def interval(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return ordered[int(0.05 * len(ordered))], ordered[int(0.95 * len(ordered)) - 1]


def bootstrap(
    seeds: list[dict[str, Arm]], rules: tuple[str, ...] = ("auto",)
) -> dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]]:
    """Per rule arm, 90 % intervals of the ratio off / rule, of its loss share, and of the
    ratio of its ratio to the first rule's, resampling seeds (all arms of a seed together:
    they face the same candidates)."""
    rng = random.Random(20261202)
    drawn: dict[str, list[tuple[float, float]]] = {rule: [] for rule in rules}
    for _ in range(BOOTSTRAP):
        resampled = [rng.choice(seeds) for _ in seeds]
        for rule in rules:
            drawn[rule].append(figures(resampled, rule)[2:])
    first = [ratio for ratio, _ in drawn[rules[0]]]
    return {
        rule: (
            interval([ratio for ratio, _ in values]),
            interval([lost for _, lost in values]),
            interval([ratio / f for (ratio, _), f in zip(values, first, strict=True)]),
        )
        for rule, values in drawn.items()
    }


def report(family: Family, seeds: list[dict[str, Arm]]) -> tuple[float, float]:
    """Print one family's figures; return the rule's ratio and loss share."""
    tag = f"[{family.name}]"
    rules = ("auto", *(name for name in seeds[0] if name not in ("off", "auto", "oracle")))
    for name in ("off", *rules):
        arms = [arms[name] for arms in seeds]
        hours = sum(a.gpu_s for a in arms) / 3600
        improvements = sum(a.real_improvements for a in arms)
        print(
            f"{tag} {name:>4}: {sum(a.runs for a in arms)} runs, "
            f"{sum(a.stops for a in arms)} stopped early, {hours:.0f} GPU-hours, "
            f"{improvements} real improvements ({hours / max(1, improvements):.2f} GPU-hours "
            f"each), final true val_bpb {statistics.fmean(a.final_true for a in arms):.4f} "
            f"(mean of {len(arms)})"
        )
    at_equal = equal_spend_text(seeds)
    print(f"{tag} incumbent's true val_bpb at the GPU-hours every arm spent: {at_equal}")
    stopped_at = [f for arms in seeds for f in arms["auto"].stopped_at]
    if stopped_at:
        quarters = [sum(1 for f in stopped_at if q / 4 < f <= (q + 1) / 4) for q in range(4)]
        shares = ", ".join(f"{n / len(stopped_at):.0%}" for n in quarters)
        print(
            f"{tag} stops by quarter of the budget: {shares}; "
            f"mean fraction used {statistics.fmean(stopped_at):.2f}"
        )
    intervals = bootstrap(seeds, rules)
    measured = {rule: figures(seeds, rule) for rule in rules}
    for rule in rules:
        per_off, per_rule, ratio, lost = measured[rule]
        (r_low, r_high), (l_low, l_high), _ = intervals[rule]
        offered = sum(arms[rule].offered for arms in seeds)
        print(
            f"{tag} true improvements lost{_by(rule)}: "
            f"{sum(arms[rule].lost for arms in seeds)} of {offered} offered "
            f"({lost:.1%}, 90% CI {l_low:.1%}..{l_high:.1%}, goal <= 5%)"
        )
        spent = [sum(arms[n].gpu_s for arms in seeds) for n in ("off", rule)]
        print(f"{tag} GPU-hours for as many candidates, off / {rule}: {spent[0] / spent[1]:.2f}x")
        print(
            f"{tag} GPU-hours per real improvement: off {per_off:.2f}, {rule} {per_rule:.2f}; "
            f"off / {rule} {ratio:.2f}x (90% CI {r_low:.2f}..{r_high:.2f}, goal 1.5x)"
        )
    for rule in rules[1:]:
        low, high = intervals[rule][2]
        ratio = measured[rule][2] / measured["auto"][2]
        print(
            f"{tag} the rule {_what(rule)} against the rule: off / {rule} over off / auto "
            f"{ratio:.2f} (90% CI {low:.2f}..{high:.2f}; below 1: auto saves more)"
        )
    oracle = [
        sum(getattr(arms[n], a) for arms in seeds)
        for n in ("off", "oracle")
        for a in ("gpu_s", "real_improvements")
    ]
    per_off = measured["auto"][0]
    per_oracle = oracle[2] / 3600 / max(1, oracle[3])
    print(
        f"{tag} bound: an oracle that stops at {ORACLE_FRACTION:.0%} of the budget every "
        f"candidate truly worse than the incumbent by {ORACLE_SD:g} seed sd, from run "
        f"{MIN_CURVES}: GPU-hours per real improvement off / oracle {per_off / per_oracle:.2f}x"
    )
    return measured["auto"][2:]


def equal_spend(seeds: list[dict[str, Arm]]) -> dict[str, list[float]]:
    """Per arm but the oracle, per seed, its incumbent's true val_bpb once it had spent what
    the seed's thriftiest arm spent: quality per GPU-hour, whatever the count of improvements
    (an arm that stops more runs spends less on the same candidates)."""
    names = [name for name in seeds[0] if name != "oracle"]
    found: dict[str, list[float]] = {name: [] for name in names}
    for arms in seeds:
        spent = min(arms[name].gpu_s for name in names)
        for name in names:
            found[name].append(arms[name].true_at(spent))
    return found


def equal_spend_text(seeds: list[dict[str, Arm]]) -> str:
    """The arms' mean incumbents at equal spend, and each one's gap to ``off`` with a 90 %
    bootstrap interval over the seeds (below 0: better than running every run to the end)."""
    found = equal_spend(seeds)
    means = ", ".join(f"{name} {statistics.fmean(v):.4f}" for name, v in found.items())
    rng = random.Random(20261203)
    gaps = []
    for name, values in found.items():
        if name == "off":
            continue
        paired = [a - b for a, b in zip(values, found["off"], strict=True)]
        drawn = [statistics.fmean(rng.choices(paired, k=len(paired))) for _ in range(BOOTSTRAP)]
        low, high = interval(drawn)
        gaps.append(f"{name} - off {statistics.fmean(paired):+.4f} ({low:+.4f}..{high:+.4f})")
    return f"{means}; {', '.join(gaps)}"


def _by(rule: str) -> str:
    return "" if rule == "auto" else f" by {rule}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=600, help="per arm and seed")
    parser.add_argument("--family", choices=["all", *FAMILIES], default="all")
    parser.add_argument(
        "--compare-curve-only",
        action="store_true",
        help="also run the rule reading the curve alone (no hyperparameters), as before",
    )
    parser.add_argument(
        "--compare-shapes",
        metavar="SHAPES",
        action="append",
        default=[],
        help="also run the rule whose fits read these terms in place of the daemon's "
        "(comma-separated: square, product, history; 'none' for the three bins and linear "
        "terms alone), as arm 'shN' for the Nth time the option is given",
    )
    parser.add_argument(
        "--proposer",
        choices=["mix", "portfolio"],
        default="mix",
        help="who draws the candidates: 'mix' (70%% perturb the incumbent, 30%% uniform; the "
        "same candidates in every arm) or 'portfolio' (the daemon's default proposer, reading "
        "each arm's own runs, with arm 'ranked' beside it: stopped runs told as crashes)",
    )
    args = parser.parse_args()
    shaped = {f"sh{n}": _shapes(text) for n, text in enumerate(args.compare_shapes, 1)}
    # Each stop logs a line; a benchmark of thousands of runs wants only its figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    families = list(FAMILIES.values()) if args.family == "all" else [FAMILIES[args.family]]
    print(f"bins {BINS}")
    for name, shapes in shaped.items():
        print(f"arm {name}: the rule with hyperparameter terms {', '.join(shapes) or 'linear'}")
    results = {}
    for family in families:
        seeds = []
        for seed in range(args.seeds):
            by = args.proposer
            arms = {
                "off": Arm(False, proposer=by),
                "auto": Arm(True, proposer=by),
                "oracle": Arm(False, oracle=True, proposer=by),
            }
            if by == "portfolio":
                arms["ranked"] = Arm(True, proposer="ranked")
            if args.compare_curve_only:
                arms["curve"] = Arm(True, hyperparams=False)
            arms |= {name: Arm(True, shapes=shapes) for name, shapes in shaped.items()}
            for arm in arms.values():
                search(arm, seed, args.candidates, family)
            seeds.append(arms)
        results[family.name] = report(family, seeds)
    worst_ratio = min(results, key=lambda n: results[n][0])
    worst_loss = max(results, key=lambda n: results[n][1])
    print(
        f"worst family: GPU-hours per real improvement off / auto "
        f"{results[worst_ratio][0]:.2f}x ({worst_ratio}, goal 1.5x), true improvements lost "
        f"{results[worst_loss][1]:.1%} ({worst_loss}, goal <= 5%)"
    )


def _what(rule: str) -> str:
    if rule == "ranked":
        return "with the stopped runs ranked among the rest by the proposer"
    return "reading the curve alone" if rule == "curve" else f"in arm {rule}"


def _shapes(text: str) -> tuple[Shape, ...]:
    known: dict[str, Shape] = {"square": "square", "product": "product", "history": "history"}
    words = [w for w in text.split(",") if w and w != "none"]
    unknown = [w for w in words if w not in known]
    if unknown:
        raise SystemExit(f"--compare-shapes: unknown shape {unknown[0]!r} ({', '.join(known)})")
    return tuple(known[w] for w in words)


if __name__ == "__main__":
    main()
