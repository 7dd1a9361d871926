"""Judging against the best: the best a keep makes, and how our own keep meets the memory's."""

from __future__ import annotations

import math

import pytest

from autoresearchd.judging import best_from, covers, implausible, lowest, own_outdated, plausible
from autoresearchd.models import Best, Result, Status


def best(val_bpb: float, *, result_id: str = "r", track: str = "t") -> Best:
    return Best(track, None, val_bpb, "LR = 0.01\n", "sha", result_id, "alice", 0.0)


def kept(**changes: object) -> Result:
    result = Result(
        id="alice-1",
        agent_id="alice",
        track="t",
        status=Status.KEEP,
        val_bpb=2.5,
        description="lr up",
        train_py="LR = 0.02\n",
        train_py_sha256="abc",
        parent_sha256="def",
        seed=7,
        device_name="GPU",
        device_uuid="GPU-1",
        memory_gb=24.0,
        vram_tier="24gb",
        started_at=10.0,
        completed_at=70.0,
        duration_s=60.0,
    )
    return result.with_(**changes)


def test_a_keep_makes_a_best_of_its_own_script_tier_and_agent() -> None:
    made = best_from(kept())
    assert made == Best("t", "24gb", 2.5, "LR = 0.02\n", "abc", "alice-1", "alice", 70.0)


def test_a_replicated_keep_records_its_confirmed_mean_not_its_last_run() -> None:
    assert best_from(kept(val_bpb=2.4, confirmed_bpb=2.45)).val_bpb == 2.45


def test_a_keep_without_a_score_makes_an_unbeatable_nothing() -> None:
    assert best_from(kept(val_bpb=None)).val_bpb == math.inf


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (None, False),
        (best(2.6), False),  # the memory still holds something worse
        (best(2.5), True),  # as good as ours: ours adds nothing
        (best(2.4, result_id="bob-9"), True),
        (best(9.9, result_id="mine"), True),  # our own keep, whatever the figure says
    ],
)
def test_the_memory_covers_our_keep_once_it_holds_it_or_better(
    memory: Best | None, expected: bool
) -> None:
    assert covers(memory, best(2.5, result_id="mine")) is expected


def test_our_keep_is_outdated_on_another_track_even_if_the_memory_lags() -> None:
    own = best(2.5, result_id="mine", track="old")
    assert own_outdated(own, best(3.0), "new")
    assert not own_outdated(own, best(3.0), "old")
    assert own_outdated(own, best(2.0), "old")


def test_lowest_picks_the_smallest_val_bpb_of_those_known() -> None:
    assert lowest(None, None) is None
    assert lowest(best(3.0, result_id="a"), None, best(2.0, result_id="b")) == best(
        2.0, result_id="b"
    )
    assert lowest(None, best(3.0)) == best(3.0)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1.0, "val_bpb -1.0 is not positive"),
        (0.0, "val_bpb 0.0 is not positive"),
        (math.nan, "val_bpb nan is not finite"),
        (-math.inf, "val_bpb -inf is not finite"),
        (0.502, "val_bpb 0.502 is below the synthetic track's floor 1.7363"),
        (1.70, "below the synthetic track's floor"),
        (65.0, "above the synthetic track's ceiling 64"),
    ],
)
def test_a_score_no_honest_run_can_reach_is_implausible(value: float, reason: str) -> None:
    found = implausible(value, "synthetic")
    assert found is not None and reason in found


@pytest.mark.parametrize(
    ("value", "track"), [(1.75, "synthetic"), (0.3, "shakespeare"), (0.01, "x")]
)
def test_scores_within_a_tracks_bounds_are_plausible(value: float, track: str) -> None:
    assert implausible(value, track) is None
    assert implausible(None, track) is None  # no score (a crash) is judged elsewhere


def test_an_implausible_run_is_recorded_invalid_with_its_reason() -> None:
    faked = plausible(kept(status=Status.DISCARD, val_bpb=-1.0, track="synthetic"))
    assert faked.status is Status.INVALID
    assert faked.error == "implausible: val_bpb -1.0 is not positive"
    honest = kept(status=Status.DISCARD, val_bpb=1.9, track="synthetic")
    assert plausible(honest) is honest
