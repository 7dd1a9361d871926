"""The promotion rules: fresh replicates against the incumbent's own runs, beyond noise."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from autoresearchd.config_loader import parse_config
from autoresearchd.models import Result, Status
from autoresearchd.promotion import (
    PRIOR_DOF,
    PRIOR_SD,
    BonferroniRule,
    MeanRule,
    Noise,
    SequentialRule,
    Step,
    Trial,
    conditional_power,
    information,
    make_rule,
    measurements,
    pooled_noise,
    spending_bounds,
    student,
)
from tests.memory.conformance import make_result

NOISE = Noise(0.005, 1000)


SETTINGS = {"replicates": 4, "min_replicates": 2, "incumbent_runs": 3, "significance": 1e-5}
#: Both significance rules: what the module docstring says of both holds for each.
KINDS = [SequentialRule, BonferroniRule]


def bonferroni(**changes: float) -> BonferroniRule:
    return BonferroniRule(NOISE, **(SETTINGS | changes))  # type: ignore[arg-type]


def sequential(**changes: float) -> SequentialRule:
    return SequentialRule(NOISE, **(SETTINGS | changes))  # type: ignore[arg-type]


@pytest.fixture(params=KINDS, ids=lambda kind: kind.__name__)
def rule(request: pytest.FixtureRequest) -> Any:
    """Each significance rule in turn, built by calling the fixture with its settings."""
    kind = request.param
    return lambda **changes: kind(NOISE, **(SETTINGS | changes))


def test_the_bonferroni_threshold_is_split_over_the_looks() -> None:
    """Keeps may be declared after replicates 2, 3 and 4: three looks at 1e-5 / 3 each."""
    assert bonferroni().z == pytest.approx(statistics.NormalDist().inv_cdf(1 - 1e-5 / 3))
    assert bonferroni().z == pytest.approx(4.5, abs=0.01)


def test_one_look_spends_all_the_error_at_a_single_tests_quantile() -> None:
    (bound,) = spending_bounds((information(4, 4),), 1e-5)
    assert bound == pytest.approx(statistics.NormalDist().inv_cdf(1 - 1e-5), abs=1e-3)


def test_spending_boundaries_hold_the_error_over_all_looks() -> None:
    """Simulated null trials (fresh and incumbent runs of equal sources) cross the
    boundaries with the chance spent, 0.05, not the chance of one look times five."""
    m, looks = 6, range(2, 7)
    bounds = spending_bounds(tuple(information(n, m) for n in looks), 0.05)
    rng, trials, crossed = random.Random(7), 20_000, 0
    for _ in range(trials):
        incumbent, total = statistics.fmean(rng.gauss(0, 1) for _ in range(m)), 0.0
        for n in range(1, looks[-1] + 1):
            total += rng.gauss(0, 1)
            if (
                n >= looks[0]
                and (incumbent - total / n) * math.sqrt(information(n, m)) > bounds[n - looks[0]]
            ):
                crossed += 1
                break
    assert crossed / trials == pytest.approx(0.05, abs=0.006)  # 4 standard errors
    # Little is spent early, so the last boundary sits near a single test's and far below
    # Bonferroni's.
    assert bounds[0] > bounds[-1]
    single = statistics.NormalDist().inv_cdf(0.95)
    assert single < bounds[-1] < statistics.NormalDist().inv_cdf(1 - 0.05 / 5)


def test_a_young_noise_estimate_widens_the_boundary() -> None:
    assert student(4.0, math.inf) == 4.0
    assert student(4.0, 10) > student(4.0, 100) > 4.0
    young = SequentialRule(Noise(0.005, 10), **SETTINGS)  # type: ignore[arg-type]
    assert young.bounds(3)[-1] > sequential().bounds(3)[-1]


def test_a_likely_loser_stops_early_for_futility() -> None:
    """Against 16 incumbent runs, 0.002 better after two replicates is far from what the
    last of 16 looks needs: the sequential rule stops; the Bonferroni rule runs on."""
    settings = {"replicates": 16, "incumbent_runs": 16}
    incumbent = (3.0,) * 16
    trial = Trial(selecting=2.99, best=3.0, incumbent=incumbent, fresh=(2.998, 2.998))
    assert sequential(**settings).next_step(trial) is Step.DISCARD
    assert bonferroni(**settings).next_step(trial) is Step.CANDIDATE
    # 0.01 better, two noise deviations, is worth more replicates, and they find it.
    close = Trial(selecting=2.99, best=3.0, incumbent=incumbent)
    while (step := sequential(**settings).next_step(close)) is Step.CANDIDATE:
        close = close.with_fresh(2.99)
    assert step is Step.KEEP and 4 < len(close.fresh) < 16


def test_conditional_power_follows_the_trend() -> None:
    now, final = information(2, 6), information(10, 6)
    assert conditional_power(4.0, now, final, 4.5) > 0.9
    assert conditional_power(0.5, now, final, 4.5) < 0.01
    assert conditional_power(5.0, final, final, 4.5) == 1.0


def test_an_incumbent_with_too_few_runs_is_remeasured_first(rule: Any) -> None:
    trial = Trial(selecting=2.9, best=3.0, incumbent=(3.0,))
    assert rule().next_step(trial) is Step.INCUMBENT
    assert rule().next_step(trial.with_incumbent(3.0).with_incumbent(3.0)) is Step.CANDIDATE
    cannot = Trial(selecting=2.9, best=3.0, incumbent=(3.0,), remeasurable=False)
    assert rule().next_step(cannot) is Step.CANDIDATE


def test_the_selecting_run_never_counts(rule: Any) -> None:
    """A lucky selecting run (2.0) would make the mean of all runs look far better."""
    trial = Trial(selecting=2.0, best=3.0, incumbent=(3.0, 3.0, 3.0), fresh=(3.0, 3.0))
    assert rule().next_step(trial) is Step.DISCARD  # the fresh runs show no gain at all
    assert MeanRule(2).next_step(trial) is Step.KEEP  # the former rule keeps it
    assert rule().confirmed(trial.with_fresh(2.9)) == pytest.approx(statistics.fmean((3, 3, 2.9)))


def test_a_clear_loser_stops_after_one_replicate(rule: Any) -> None:
    trial = Trial(selecting=2.99, best=3.0, incumbent=(3.0, 3.0, 3.0), fresh=(3.01,))
    assert rule().next_step(trial) is Step.DISCARD


def test_an_uncertain_candidate_runs_again_until_the_last_replicate() -> None:
    """0.01 better is two noise deviations: not significant at 1e-5 after 2, 3 or 4 runs.
    (The sequential rule stops such a candidate at once: see the futility test.)"""
    trial = Trial(selecting=2.99, best=3.0, incumbent=(3.0, 3.0, 3.0))
    for n in range(1, 4):
        trial = trial.with_fresh(2.99)
        assert bonferroni().next_step(trial) is Step.CANDIDATE, n
    assert bonferroni().next_step(trial.with_fresh(2.99)) is Step.DISCARD
    assert sequential().next_step(trial) is Step.DISCARD


def test_a_significant_improvement_is_kept_once_it_has_min_replicates(rule: Any) -> None:
    """0.03 better with se = 0.005·sqrt(1/2 + 1/3) = 0.0046: 6.6 standard errors."""
    trial = Trial(selecting=2.97, best=3.0, incumbent=(3.0, 3.0, 3.0), fresh=(2.97,))
    assert rule().next_step(trial) is Step.CANDIDATE  # one replicate is never enough
    assert rule().next_step(trial.with_fresh(2.97)) is Step.KEEP
    small = trial.with_fresh(2.97).with_fresh(2.97).with_fresh(2.97)
    assert rule(min_improvement=0.05).next_step(small) is Step.DISCARD  # too small to matter


def test_with_nothing_to_compare_the_replicates_only_confirm_a_score(rule: Any) -> None:
    trial = Trial(selecting=2.9, best=None, incumbent=None, fresh=(2.95,))
    assert rule().next_step(trial) is Step.CANDIDATE
    assert rule().next_step(trial.with_fresh(2.96)) is Step.KEEP


def test_the_former_mean_rule_counts_the_selecting_run() -> None:
    """What the sequential rule replaces: one lucky run carries the mean past the best."""
    trial = Trial(selecting=2.98, best=3.0, incumbent=(3.0,), fresh=(3.0, 2.99))
    assert MeanRule(2).next_step(trial) is Step.KEEP
    assert MeanRule(2).confirmed(trial) == pytest.approx(2.99)
    assert MeanRule(3).next_step(trial) is Step.CANDIDATE


def test_noise_is_pooled_over_sources_and_shrunk_toward_the_prior() -> None:
    assert pooled_noise([]) == Noise(PRIOR_SD, PRIOR_DOF)
    groups = [[1.0, 1.002], [2.0, 2.004, 1.998], [5.0]]  # the single run adds nothing
    spread = sum((v - statistics.fmean(g)) ** 2 for g in groups for v in g)
    found = pooled_noise(groups)
    assert found.dof == PRIOR_DOF + 3
    assert found.sd == pytest.approx(math.sqrt((PRIOR_DOF * PRIOR_SD**2 + spread) / found.dof))


def result(**changes: object) -> Result:
    return make_result(
        **({"track": "synthetic", "vram_tier": "cpu", "status": Status.DISCARD} | changes)
    )


def test_measurements_are_scored_runs_of_one_track_and_tier_by_source() -> None:
    kept = result(train_py="A = 1\n", val_bpb=2.5, status=Status.KEEP)
    runs = [
        kept,
        result(train_py="A = 1\n", val_bpb=2.6),
        result(train_py="A = 1\n", val_bpb=None, status=Status.CRASH),
        result(train_py="A = 1\n", val_bpb=2.0, status=Status.INVALID),
        result(train_py="A = 1\n", val_bpb=2.7, vram_tier="xl"),
        result(train_py="A = 1\n", val_bpb=2.8, track="other"),
        result(train_py="B = 2\n", val_bpb=math.nan),
    ]
    found = measurements(runs, "synthetic", "cpu")
    assert found == {kept.train_py_sha256: {kept.id: 2.5, runs[1].id: 2.6}}


def test_the_configured_rule_is_built_from_the_experiment_settings() -> None:
    experiment = parse_config({"experiment": {"replicates": 1, "significance": 1e-4}}).experiment
    built = make_rule(experiment, NOISE)
    assert isinstance(built, SequentialRule)
    # A candidate kept at its first look has two runs: the incumbent needs no more.
    assert (built.replicates, built.min_replicates, built.incumbent_runs) == (1, 1, 2)
    assert built.significance == 1e-4
    defaults = make_rule(parse_config({}).experiment, NOISE)
    assert isinstance(defaults, SequentialRule)
    assert (defaults.replicates, defaults.incumbent_runs, defaults.min_replicates) == (16, 16, 2)
    replaced = parse_config({"experiment": {"promotion": "bonferroni"}}).experiment
    assert isinstance(make_rule(replaced, NOISE), BonferroniRule)
    former = parse_config({"experiment": {"promotion": "mean"}}).experiment
    assert make_rule(former, NOISE) == MeanRule(16, 0.001)


def test_a_candidate_that_only_beat_a_lucky_record_stops_before_any_replicate(rule: Any) -> None:
    """The best recorded 2.99 on one lucky run; its own runs average 3.0. A selecting run of
    2.9995 beat the record but not the incumbent's mean."""
    trial = Trial(selecting=2.9995, best=2.99, incumbent=(2.99, 3.005, 3.005))
    assert rule().next_step(trial) is Step.DISCARD
    assert rule().next_step(Trial(selecting=2.98, best=2.99, incumbent=(2.99, 3.005, 3.005))) is (
        Step.CANDIDATE
    )
