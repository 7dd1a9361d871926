"""The promotion rules: fresh replicates against the incumbent's own runs, beyond noise."""

from __future__ import annotations

import math
import statistics

import pytest

from autoresearchd.config import parse_config
from autoresearchd.models import Result, Status
from autoresearchd.promotion import (
    PRIOR_DOF,
    PRIOR_SD,
    MeanRule,
    Noise,
    SequentialRule,
    Step,
    Trial,
    make_rule,
    measurements,
    pooled_noise,
)
from tests.memory.conformance import make_result

NOISE = Noise(0.005, 1000)


def rule(**changes: float) -> SequentialRule:
    settings = {"replicates": 4, "min_replicates": 2, "incumbent_runs": 3, "significance": 1e-5}
    return SequentialRule(NOISE, **(settings | changes))  # type: ignore[arg-type]


def test_the_threshold_is_bonferroni_over_the_looks_at_the_significance() -> None:
    """Keeps may be declared after replicates 2, 3 and 4: three looks at 1e-5 / 3 each."""
    assert rule().z == pytest.approx(statistics.NormalDist().inv_cdf(1 - 1e-5 / 3))
    assert rule().z == pytest.approx(4.5, abs=0.01)


def test_an_incumbent_with_too_few_runs_is_remeasured_first() -> None:
    trial = Trial(selecting=2.9, best=3.0, incumbent=(3.0,))
    assert rule().next_step(trial) is Step.INCUMBENT
    assert rule().next_step(trial.with_incumbent(3.0).with_incumbent(3.0)) is Step.CANDIDATE
    cannot = Trial(selecting=2.9, best=3.0, incumbent=(3.0,), remeasurable=False)
    assert rule().next_step(cannot) is Step.CANDIDATE


def test_the_selecting_run_never_counts() -> None:
    """A lucky selecting run (2.0) would make the mean of all runs look far better."""
    trial = Trial(selecting=2.0, best=3.0, incumbent=(3.0, 3.0, 3.0), fresh=(3.0, 3.0))
    assert rule().next_step(trial) is Step.DISCARD  # the fresh runs show no gain at all
    assert MeanRule(2).next_step(trial) is Step.KEEP  # the former rule keeps it
    assert rule().confirmed(trial.with_fresh(2.9)) == pytest.approx(statistics.fmean((3, 3, 2.9)))


def test_a_clear_loser_stops_after_one_replicate() -> None:
    trial = Trial(selecting=2.99, best=3.0, incumbent=(3.0, 3.0, 3.0), fresh=(3.01,))
    assert rule().next_step(trial) is Step.DISCARD


def test_an_uncertain_candidate_runs_again_until_the_last_replicate() -> None:
    """0.01 better is two noise deviations: not significant at 1e-5 after 2, 3 or 4 runs."""
    trial = Trial(selecting=2.99, best=3.0, incumbent=(3.0, 3.0, 3.0))
    for n in range(1, 4):
        trial = trial.with_fresh(2.99)
        assert rule().next_step(trial) is Step.CANDIDATE, n
    assert rule().next_step(trial.with_fresh(2.99)) is Step.DISCARD


def test_a_significant_improvement_is_kept_once_it_has_min_replicates() -> None:
    """0.03 better with se = 0.005·sqrt(1/2 + 1/3) = 0.0046: 6.6 standard errors."""
    trial = Trial(selecting=2.97, best=3.0, incumbent=(3.0, 3.0, 3.0), fresh=(2.97,))
    assert rule().next_step(trial) is Step.CANDIDATE  # one replicate is never enough
    assert rule().next_step(trial.with_fresh(2.97)) is Step.KEEP
    small = trial.with_fresh(2.97).with_fresh(2.97).with_fresh(2.97)
    assert rule(min_improvement=0.05).next_step(small) is Step.DISCARD  # too small to matter


def test_with_nothing_to_compare_the_replicates_only_confirm_a_score() -> None:
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
    former = parse_config({"experiment": {"promotion": "mean"}}).experiment
    assert make_rule(former, NOISE) == MeanRule(6, 0.001)


def test_a_candidate_that_only_beat_a_lucky_record_stops_before_any_replicate() -> None:
    """The best recorded 2.99 on one lucky run; its own runs average 3.0. A selecting run of
    2.9995 beat the record but not the incumbent's mean."""
    trial = Trial(selecting=2.9995, best=2.99, incumbent=(2.99, 3.005, 3.005))
    assert rule().next_step(trial) is Step.DISCARD
    assert rule().next_step(Trial(selecting=2.98, best=2.99, incumbent=(2.99, 3.005, 3.005))) is (
        Step.CANDIDATE
    )
