"""Promotion: how often seed noise is promoted, and what real improvements cost to confirm.

Runs the daemon's own judging and replication code with simulated runs in place of
subprocesses: the screen is :func:`autoresearchd.judging.improves`, the rule is
:func:`autoresearchd.promotion.make_rule` built from a parsed ``[experiment]`` config, the
noise is :func:`~autoresearchd.promotion.pooled_noise` over every run so far (grouped by
:func:`~autoresearchd.promotion.measurements`, as a daemon's workers see them), and each
trial is driven by ``promotion.settle`` and ``promotion.accepts``, exactly as
``Worker.replicate`` drives them. One worker proposes candidates from the
current best; a run takes 300 s of one GPU.

Landscapes:

- ``null``: only the seed matters. Every candidate is exactly as good as the incumbent;
  a run scores the true value plus N(0, sd), for sd 0.003, 0.005 and 0.01, over
  ``--candidates`` candidates (5,000 by default) each. Every promotion is a false one.
- ``effects``: a candidate's true value is its parent's (the current best) plus an effect:
  with probability 0.1 an improvement drawn from Exp(mean 0.01), scaled down as the parent
  nears a floor of 2.0 (mean ``0.01·(parent - 2)``), else a loss |N(0, 0.02)|; noise sd
  0.005. A *real improvement* is one larger than the noise's sd.

Three rules run side by side on the same landscapes: ``mean`` is the first rule
(``promotion = "mean"``: the mean of the selecting run and 2 replicates against the best's
value by 0.001), ``bonf`` the rule it was replaced by (``promotion = "bonferroni"`` with
the settings it shipped with: 6 replicates at most, 6 incumbent runs, a fixed boundary
Bonferroni over the looks) and ``new`` today's default (``"sequential"``: alpha-spending
group-sequential boundaries with a futility stop, 16 replicates at most). Printed per
landscape and rule: promotions, false promotions (a candidate no better than its
incumbent), the share of real improvements promoted, the GPU-hours spent confirming
(replicates and re-measures, beyond each candidate's selecting run), and the final best's
true value and recorded value (on the null landscape, any gap between them is luck).
Then the share of real improvements the new rule promotes against ``bonf``'s, with the
confirmation GPU-hours of each. Last: each rule's false promotions over all null candidates
(goal for the new one: 0).
Takes about fifteen minutes on one core. Usage: ``python benchmarks/promotion.py [--candidates N]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from simulated import simulated_run  # a sibling script of this one

from autoresearchd.config_loader import parse_config
from autoresearchd.judging import improves
from autoresearchd.models import Best, Status
from autoresearchd.promotion import (
    accepts,
    make_rule,
    measurements,
    new_trial,
    pooled_noise,
    settle,
)

TRACK, TIER = "synthetic", "xl"
RUN_S = 300.0
START = 3.0  # the baseline's true val_bpb
FLOOR = 2.0  # the best any source can do on the effects landscape
NULL_NOISE = (0.003, 0.005, 0.01)
EFFECTS_NOISE = 0.005
RULES: dict[str, dict[str, object]] = {
    "mean": {"promotion": "mean", "replicates": 2, "min_improvement": 0.001},
    "bonf": {"promotion": "bonferroni", "replicates": 6, "incumbent_runs": 6},
    "new": {},
}

#: Draws a candidate's true value from its parent's.
Landscape = Callable[[random.Random, float], float]


def null(rng: random.Random, parent: float) -> float:
    return parent


def effects(rng: random.Random, parent: float) -> float:
    """Improvements shrink as the best nears :data:`FLOOR`, as a real search's do."""
    if rng.random() < 0.1:
        return parent - rng.expovariate(1 / 0.01) * (parent - FLOOR) / (START - FLOOR)
    return parent + abs(rng.gauss(0.0, 0.02))


@dataclass
class Tally:
    """What one landscape did under one rule."""

    candidates: int = 0
    promotions: int = 0
    false_promotions: int = 0
    real: int = 0
    real_promoted: int = 0
    confirm_runs: int = 0
    final_true: float = START
    final_recorded: float = START


@dataclass
class Swarm:
    """One worker's view: every run so far, the best, and the best's true value."""

    sd: float
    rng: random.Random
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    best: Best | None = None
    best_true: float = START
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def run(self, sha: str, true: float) -> float:
        """One run of source ``sha``: its score, recorded as the memory would hold it."""
        value = true + self.rng.gauss(0.0, self.sd)
        record = simulated_run(
            next(self.ids),
            "",
            Status.DISCARD,
            value,
            track=TRACK,
            vram_tier=TIER,
            train_py_sha256=sha,
            seed=0,
            device_uuid="sim-0",
            started_at=0.0,
            completed_at=0.0,
            duration_s=RUN_S,
        )
        for source, runs in measurements([record], TRACK, TIER).items():
            self.measured.setdefault(source, {}).update(runs)
        return value

    def promote(self, sha: str, value: float, true: float) -> None:
        self.best = Best(TRACK, TIER, value, "", sha, sha, "bench", 0.0)
        self.best_true = true


async def candidate(
    swarm: Swarm, settings: dict[str, object], sha: str, true: float
) -> tuple[bool, int]:
    """One candidate through the screen and, if it passes, the trial: whether it was
    promoted, and how many confirming runs (replicates and re-measures) it took."""
    experiment = parse_config({"experiment": settings}).experiment
    first = swarm.run(sha, true)
    if not improves(first, swarm.best, experiment.min_improvement):
        return False, 0
    runs = 0

    async def fresh() -> float:
        nonlocal runs
        runs += 1
        return swarm.run(sha, true)

    async def incumbent() -> float | None:
        nonlocal runs
        if swarm.best is None:
            return None
        runs += 1
        return swarm.run(swarm.best.train_py_sha256, swarm.best_true)

    noise = pooled_noise(group.values() for group in swarm.measured.values())
    trial = new_trial(first, swarm.best, swarm.measured, remeasurable=True)
    rule = make_rule(experiment, noise)
    step, trial = await settle(rule, trial, fresh, incumbent, lambda: False)
    value = rule.confirmed(trial) if trial.fresh else math.inf
    promoted = accepts(step, value, swarm.best)
    if promoted:
        swarm.promote(sha, value, true)
    return promoted, runs


async def landscape(
    name: str, landscape_of: Landscape, sd: float, settings: dict[str, object], n: int, seed: int
) -> Tally:
    rng = random.Random(seed)
    swarm = Swarm(sd, random.Random(seed + 1))
    baseline = swarm.run("baseline", START)  # the first best: kept unreplicated
    swarm.promote("baseline", baseline, START)
    tally = Tally()
    for i in range(n):
        parent = swarm.best_true
        true = landscape_of(rng, parent)
        real = parent - true > sd
        promoted, runs = await candidate(swarm, settings, f"{name}-{i}", true)
        tally.candidates += 1
        tally.confirm_runs += runs
        tally.real += real
        tally.promotions += promoted
        tally.real_promoted += promoted and real
        tally.false_promotions += promoted and true >= parent
    tally.final_true = swarm.best_true
    tally.final_recorded = swarm.best.val_bpb if swarm.best else math.inf
    return tally


def row(name: str, sd: float, rule: str, tally: Tally) -> str:
    share = tally.real_promoted / tally.real if tally.real else math.nan
    hours = tally.confirm_runs * RUN_S / 3600
    return (
        f"{name:8} {sd:6.3f} {rule:4} {tally.candidates:10d} {tally.promotions:10d}"
        f" {tally.false_promotions:6d} {tally.real:5d} {share:8.1%} {hours:12.1f}"
        f" {hours / tally.candidates:10.3f} {tally.final_true:10.4f} {tally.final_recorded:10.4f}"
    )


async def main(n: int) -> None:
    print(
        f"{'scenario':8} {'sd':>6} {'rule':4} {'candidates':>10} {'promotions':>10}"
        f" {'false':>6} {'real':>5} {'promoted':>8} {'confirm GPUh':>12} {'GPUh/cand':>10}"
        f" {'final true':>10} {'recorded':>10}"
    )
    null_false = {rule: 0 for rule in RULES}
    for index, sd in enumerate(NULL_NOISE):
        for rule, settings in RULES.items():
            tally = await landscape("null", null, sd, settings, n, seed=100 + index)
            null_false[rule] += tally.false_promotions
            print(row("null", sd, rule, tally))
    found: dict[str, Tally] = {}
    for rule, settings in RULES.items():
        found[rule] = tally = await landscape("effects", effects, EFFECTS_NOISE, settings, n, 200)
        print(row("effects", EFFECTS_NOISE, rule, tally))
    new, old = found["new"], found["bonf"]
    share = {rule: t.real_promoted / t.real if t.real else math.nan for rule, t in found.items()}
    print(
        f"real improvements promoted, new rule vs bonf: {share['new']:.1%} vs {share['bonf']:.1%}"
        f" = {share['new'] / share['bonf']:.2f}x, confirmation GPU-hours"
        f" {new.confirm_runs * RUN_S / 3600:.1f} vs {old.confirm_runs * RUN_S / 3600:.1f}"
    )
    total = n * len(NULL_NOISE)
    counts = ", ".join(f"{rule} {count}" for rule, count in null_false.items())
    print(f"false promotions on the null landscape of {total} candidates: {counts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=5000)
    anyio.run(main, parser.parse_args().candidates)
