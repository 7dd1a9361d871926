"""Early stopping: GPU-hours per real improvement found, with and without it, same landscape.

Simulated training runs whose learning curve depends on four hyperparameters, fed step by
step through the daemon's own :class:`autoresearchd.early_stopping.LearningCurve`, judged by
its own rule (:func:`~autoresearchd.early_stopping.calibrate` on the curves stored so far,
:func:`~autoresearchd.early_stopping.make_judge` against the incumbent's runs). Nothing here
reimplements the rule.

The landscape (a loss model in the spirit of scaling laws, written before any rule was tuned):

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
allows it). Printed: per arm, runs, stops, GPU-hours, real improvements and the final
incumbent's true value; then the share of true improvements lost, the ratio of GPU-hours
spent; last, the ratio of GPU-hours per real improvement.
Goal: ratio >= 1.5 with <= 5 % of true improvements lost.
Usage: ``python benchmarks/early_stopping.py [--seeds N] [--candidates N]`` (about two
minutes on one core).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
from dataclasses import dataclass, field

import structlog

from autoresearchd.early_stopping import (
    BINS,
    Calibration,
    Judge,
    LearningCurve,
    Progress,
    Sample,
    bins_of,
    calibrate,
    make_judge,
)

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


def sample_theta(rng: random.Random) -> dict[str, float]:
    return {name: rng.uniform(low, high) for name, (low, high) in SPACE.items()}


def perturb(theta: dict[str, float], rng: random.Random) -> dict[str, float]:
    child = dict(theta)
    for name in rng.sample(sorted(SPACE), rng.choice((1, 2))):
        low, high = SPACE[name]
        child[name] = min(high, max(low, child[name] + rng.gauss(0.0, 0.15 * (high - low))))
    return child


# -- one run through the daemon's own curve and rule ----------------------------------------------


@dataclass
class Run:
    final: float | None  # None: crashed or stopped early
    fraction: float  # of the budget it trained
    curve: tuple[tuple[float, float], ...]
    stopped: bool = False

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


# -- the search ------------------------------------------------------------------------------


@dataclass
class Arm:
    early_stopping: bool
    gpu_s: float = 0.0
    runs: int = 0
    stops: int = 0
    real_improvements: int = 0
    offered: int = 0  # true improvements offered as candidates
    lost: int = 0  # ... of which stopped early
    samples: list[Sample] = field(default_factory=list)
    calibration: Calibration | None = None
    completed_since: int = 0
    final_true: float = math.nan


def search(arm: Arm, seed: int, candidates: int) -> None:
    rng = random.Random(seed)
    best_theta = dict(BASELINE)
    best_runs: list[tuple[tuple[float, float], ...]] = []
    best_true = Landscape(best_theta).final()
    clock = 0

    def run(theta: dict[str, float], stoppable: bool) -> Run:
        nonlocal clock
        judge = None
        if stoppable and arm.early_stopping and arm.calibration is not None:
            incumbent = [bins_of(c) for c in best_runs]
            judge = make_judge(arm.calibration, incumbent, rng)
        result = simulate(Landscape(theta), rng, judge)
        arm.runs, arm.gpu_s, clock = arm.runs + 1, arm.gpu_s + result.gpu_s, clock + 1
        arm.stops += result.stopped
        if result.final is not None:
            key = repr(sorted(theta.items()))
            arm.samples.append(Sample(key, bins_of(result.curve), result.final, clock))
            arm.completed_since += 1
            if arm.completed_since >= RECALIBRATE_EVERY:
                arm.calibration = calibrate(arm.samples, min_improvement=MIN_IMPROVEMENT)
                arm.samples = arm.samples[-400:]
                arm.completed_since = 0
        return result

    baseline = [run(best_theta, False) for _ in range(2)]
    best_runs = [r.curve for r in baseline]
    best_finals = [r.final for r in baseline if r.final is not None]
    for _ in range(candidates):
        theta = perturb(best_theta, rng) if rng.random() < 0.7 else sample_theta(rng)
        true = Landscape(theta).final() if not Landscape(theta).diverges else math.inf
        offered = true < best_true - MIN_IMPROVEMENT
        first = run(theta, True)
        arm.offered += offered
        arm.lost += offered and first.stopped
        incumbent = statistics.fmean(best_finals)
        if first.final is None or first.final >= incumbent - MIN_IMPROVEMENT:
            continue
        fresh = [run(theta, False) for _ in range(2)]
        finals = [r.final for r in fresh if r.final is not None]
        if len(finals) < 2:
            continue
        se = SEED_SD * math.sqrt(1 / len(finals) + 1 / len(best_finals))
        if incumbent - statistics.fmean(finals) > max(MIN_IMPROVEMENT, 2.5 * se):
            arm.real_improvements += true < best_true
            best_theta, best_true = theta, true
            best_runs = [first.curve, *(r.curve for r in fresh)]
            best_finals = [first.final, *finals]
    arm.final_true = best_true


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=600, help="per arm and seed")
    args = parser.parse_args()
    # Each stop logs a line; a benchmark of thousands of runs wants only its figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    totals = {"off": Arm(False), "auto": Arm(True)}
    finals: dict[str, list[float]] = {"off": [], "auto": []}
    for seed in range(args.seeds):
        for name, total in totals.items():
            arm = Arm(total.early_stopping)
            search(arm, seed, args.candidates)
            for attr in ("gpu_s", "runs", "stops", "real_improvements", "offered", "lost"):
                setattr(total, attr, getattr(total, attr) + getattr(arm, attr))
            finals[name].append(arm.final_true)
    per = {}
    for name, arm in totals.items():
        hours = arm.gpu_s / 3600
        per[name] = hours / max(1, arm.real_improvements)
        print(
            f"{name:>4}: {arm.runs} runs, {arm.stops} stopped early, {hours:.0f} GPU-hours, "
            f"{arm.real_improvements} real improvements ({per[name]:.2f} GPU-hours each), "
            f"final true val_bpb {statistics.fmean(finals[name]):.4f} (mean of {args.seeds})"
        )
    auto = totals["auto"]
    print(
        f"true improvements lost: {auto.lost} of {auto.offered} offered "
        f"({auto.lost / max(1, auto.offered):.1%}, goal <= 5%); bins {BINS}"
    )
    hours = totals["off"].gpu_s / max(1.0, auto.gpu_s)
    print(f"GPU-hours for the same candidates, off / auto: {hours:.2f}x")
    ratio = per["off"] / per["auto"]
    print(f"GPU-hours per real improvement, off / auto: {ratio:.2f}x (goal 1.5x)")


if __name__ == "__main__":
    main()
