"""The notes a worker writes for the swarm: follow-ups after a keep, and crash insights."""

from __future__ import annotations

from autoresearchd.models import Status
from autoresearchd.sharing import crash_insights, follow_up

from .proposer_support import result
from .test_search import SMALL, variant


def test_follow_up_continues_an_improving_direction_until_the_space_ends() -> None:
    kept = result(variant(LR=0.02, DEPTH=5), 0.9, Status.KEEP, n=7)
    note = follow_up(SMALL, kept, "bob", 5.0, None)
    assert note is not None
    assert note.value["suggested_config"] == {"LR": 0.04, "DEPTH": 6}
    assert note.value["title"] == "LR 0.01 → 0.02, DEPTH 4 → 5 improved; try LR 0.04, DEPTH 6"
    assert note.value["evidence"] == ["run-7"]
    assert note.value["status"] == "open" and note.key.startswith("bob--")
    at_edge = result(variant(LR=0.1), 0.9, Status.KEEP)
    assert follow_up(variant(LR=0.05), at_edge, "bob", 5.0, None) is None


def test_crash_insight_names_threshold_tier_and_evidence() -> None:
    runs = [result(variant(DEPTH=d), 1.0, n=d) for d in (2, 3, 4, 5)]
    runs += [result(variant(DEPTH=d), None, Status.CRASH, n=10 + d) for d in (6, 7, 8)]
    runs.append(result(variant(DEPTH=7), None, Status.CRASH, n=30))
    notes = crash_insights(runs, "bob", 9.0, SMALL)
    assert [n.value["title"] for n in notes] == [
        "DEPTH at or above 6 crashed 4/4 runs on the cpu tier"
    ]
    assert sorted(notes[0].value["evidence"]) == ["run-16", "run-17", "run-18", "run-30"]
    again = crash_insights(
        [*runs, result(variant(DEPTH=8), None, Status.CRASH, n=40)], "bob", 9.0, SMALL
    )
    assert again[0].key == notes[0].key  # the same finding is stored once


def test_no_insight_without_enough_evidence_or_a_healthy_run_below() -> None:
    few = [result(variant(DEPTH=2), 1.0), result(variant(DEPTH=8), None, Status.CRASH, n=1)]
    assert crash_insights(few, "bob", 1.0, SMALL) == []
    all_crash = [result(variant(DEPTH=d), None, Status.CRASH, n=d) for d in (2, 3, 4, 5)]
    assert crash_insights(all_crash, "bob", 1.0, SMALL) == []
