"""Result records: what a run, a refused script and a failed proposal publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearchd.errors import ProposalError
from autoresearchd.models import Candidate, Device, Status, Summary
from autoresearchd.records import (
    Origin,
    build_result,
    failed_proposal,
    invalid_result,
    new_run_id,
    unrun_result,
)
from autoresearchd.runner import Outcome, RunReport

GPU = Device("cuda", 0, "GPU-1", "NVIDIA L4", memory_total_mb=23034.0)
ORIGIN = Origin("alice", "synthetic", GPU, {"torch": "2.13.0"})
CHILD = Candidate("LR = 0.02\n", parent_sha256="p" * 64, description="lr up", proposer="random")


def report(outcome: Outcome, summary: Summary | None, error: str = "") -> RunReport:
    return RunReport("alice-run1", Path("/runs/r"), outcome, summary, 0, 100.0, 160.0, 60.0, error)


def test_an_ok_run_is_a_scored_discard_carrying_the_candidate_device_and_software() -> None:
    summary = Summary(2.5, {"val_bpb": 2.5, "steps": 300.0})
    result = build_result(ORIGIN, CHILD, report("ok", summary), seed=42)
    assert (result.id, result.agent_id, result.track) == ("alice-run1", "alice", "synthetic")
    assert (result.status, result.val_bpb, result.seed) == (Status.DISCARD, 2.5, 42)
    assert (result.train_py, result.train_py_sha256) == (CHILD.source, CHILD.sha256)
    assert (result.parent_sha256, result.proposer) == ("p" * 64, "random")
    assert (result.device_name, result.device_uuid) == ("NVIDIA L4", "GPU-1")
    assert (result.memory_gb, result.vram_tier) == (GPU.memory_gb, GPU.tier)
    assert (result.started_at, result.completed_at, result.duration_s) == (100.0, 160.0, 60.0)
    assert result.metrics == {"val_bpb": 2.5, "steps": 300.0}
    assert result.software == {"torch": "2.13.0"}
    assert result.error == ""


@pytest.mark.parametrize(
    ("outcome", "status"), [("timeout", Status.TIMEOUT), ("crash", Status.CRASH)]
)
def test_a_run_that_did_not_end_ok_has_no_score_even_if_it_printed_one(
    outcome: Outcome, status: Status
) -> None:
    result = build_result(ORIGIN, CHILD, report(outcome, Summary(2.5), "killed"), seed=1)
    assert (result.status, result.val_bpb, result.error) == (status, None, "killed")


def test_a_run_without_a_summary_records_no_metrics() -> None:
    assert build_result(ORIGIN, CHILD, report("crash", None), seed=1).metrics == {}


def test_an_unrun_script_records_no_score_no_seed_and_no_duration() -> None:
    result = unrun_result(ORIGIN, CHILD, Status.INVALID, "refused", now=50.0)
    assert (result.status, result.val_bpb, result.seed, result.error) == (
        Status.INVALID,
        None,
        0,
        "refused",
    )
    assert (result.started_at, result.completed_at, result.duration_s) == (50.0, 50.0, 0.0)
    assert result.id.startswith("alice-") and result.id != new_run_id("alice")


def test_a_refused_script_is_invalid_with_its_reason() -> None:
    result = invalid_result(ORIGIN, CHILD, "trust: LR is not a literal")
    assert (result.status, result.error) == (Status.INVALID, "trust: LR is not a literal")
    assert result.train_py_sha256 == CHILD.sha256


@pytest.mark.parametrize(
    ("outcome", "status"), [("invalid", Status.INVALID), ("crash", Status.CRASH)]
)
def test_a_failed_proposal_records_what_the_proposer_wrote_under_its_name(
    outcome: str, status: Status
) -> None:
    exc = ProposalError("timed out", outcome=outcome, proposer="command", source="x = 1\n")
    result = failed_proposal(ORIGIN, exc, parent=CHILD)
    assert (result.status, result.proposer, result.train_py) == (status, "command", "x = 1\n")
    assert result.parent_sha256 == CHILD.sha256
    assert result.description == "command proposal failed"
    assert result.error == "proposer command: timed out"


def test_run_ids_are_fresh_and_name_the_agent() -> None:
    ids = {new_run_id("alice") for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("alice-") and len(i) == 18 for i in ids)
