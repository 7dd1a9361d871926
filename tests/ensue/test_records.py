"""The community record codecs: pure, so tested without a server."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from autoresearchd.ensue import records
from autoresearchd.models import Status, sha256_text
from tests.memory.conformance import make_result

WHEN = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-10T12:00:00+00:00", WHEN),
        ("2026-03-10T12:00:00Z", WHEN),
        ("2026-03-10T13:00:00+01:00", WHEN),
        ("2026-03-10T12:00:00", WHEN),  # no zone: UTC, as their client writes
        (WHEN, WHEN),
        ("yesterday", None),
        ("", None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_times_read_as_epoch_seconds(value: object, expected: float | None) -> None:
    assert records.timestamp(value) == expected


def test_iso_round_trips_through_timestamp() -> None:
    assert records.timestamp(records.iso(WHEN + 0.25)) == WHEN + 0.25


def test_a_community_key_tail_is_among_the_tails_we_look_for() -> None:
    description = "MATRIX_LR 0.04 → 0.05"
    theirs = hashlib.sha256(description.lower().strip().encode()).hexdigest()[:6]
    assert f"matrix-lr-0-04-0-05--{theirs}" in records.experiment_tails(description)
    assert records.experiment_key("GPU 0", description) == f"gpu-0--matrix-lr-0-04-0-05--{theirs}"


def test_claims_of_either_client_are_live_until_they_expire_or_are_released() -> None:
    theirs = {"claimed_at": records.iso(WHEN), "status": "claimed", "agent_id": "gpu0"}
    assert records.claim_is_live(theirs, WHEN + records.CLAIM_TTL_S - 1)
    assert not records.claim_is_live(theirs, WHEN + records.CLAIM_TTL_S + 1)
    assert not records.claim_is_live({**theirs, "status": "done"}, WHEN)
    ours = records.claim_record(
        agent_id="nova", track="t", sha256="s", description="d", now=WHEN, ttl_s=60.0
    )
    assert records.is_ours(ours) and not records.is_ours(theirs)
    assert records.claim_is_live(ours, WHEN + 59) and not records.claim_is_live(ours, WHEN + 61)
    assert not records.claim_is_live(records.released_claim(ours, WHEN + 1), WHEN + 2)
    assert records.claim_times(ours) == (WHEN, WHEN + 60.0)


def test_a_community_result_lacks_our_fields_and_still_reads() -> None:
    record = {"agent_id": "gpu0", "val_bpb": 0.97, "status": "keep", "train_py": "X = 1\n"}
    record |= {"completed_at": records.iso(WHEN), "vram_total_gb": 23.5, "num_steps": 900}
    result = records.read_result(record, key="gpu0--x--abc123", track="theirs")
    assert result is not None
    assert (result.id, result.track, result.status, result.vram_tier) == (
        "gpu0--x--abc123",
        "theirs",
        Status.KEEP,
        "medium",
    )
    assert result.train_py_sha256 == sha256_text("X = 1\n") and result.completed_at == WHEN
    assert result.metrics == {"num_steps": 900.0}


@pytest.mark.parametrize("record", [{}, {"status": "exploded"}, {"agent_id": "gpu0"}])
def test_a_record_that_is_no_result_reads_as_none(record: dict[str, object]) -> None:
    assert records.read_result(record, key="k", track="t") is None


def test_our_result_round_trips_exactly_through_its_community_shaped_record() -> None:
    result = make_result(completed_at=WHEN + 1e-7, metrics={"mfu_percent": 40.0})
    record = records.result_record(result, global_best=1.5)
    assert record["completed_at"] == records.iso(WHEN + 1e-7) and record["mfu_percent"] == 40.0
    assert records.read_result(record, key="ignored", track="ignored") == result


@pytest.mark.parametrize(
    ("current", "org_track", "confirmed"),
    [
        ({}, None, True),  # nothing there yet
        ({"track": "synthetic", "train_py_sha256": "a"}, None, True),
        ({"track": "shakespeare", "train_py_sha256": "a"}, "synthetic", False),
        ({"train_py_sha256": "a", "val_bpb": None}, None, True),  # a hub's seeded baseline
        ({"val_bpb": 0.97, "agent_id": "gpu0"}, None, False),  # the community's
        ({"val_bpb": 0.97, "agent_id": "gpu0"}, "synthetic", True),  # declared ours
        ({"val_bpb": 0.97, "agent_id": "gpu0"}, "theirs", False),
    ],
)
def test_a_best_is_ours_only_when_its_track_is_confirmed(
    current: dict[str, object], org_track: str | None, confirmed: bool
) -> None:
    assert records.best_track_confirmed(current, "synthetic", org_track) is confirmed


def test_a_community_best_checks_the_source_it_carries() -> None:
    meta = {"val_bpb": 0.97, "achieved_by": "gpu0", "train_py": "X = 1\n"}
    best = records.read_best(meta, "X = 1\n", "t", None)
    assert best is not None and (best.agent_id, best.train_py_sha256) == (
        "gpu0",
        sha256_text("X = 1\n"),
    )
    assert records.read_best(meta, "X = 2\n", "t", None) is None
    assert records.read_best({"train_py_sha256": "nope"}, "X = 1\n", "t", None) is None
