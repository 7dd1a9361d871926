"""Swarm hypotheses and insights: picking open ones, follow-ups after a keep, crash insights."""

from __future__ import annotations

import pytest

from autoresearchd.config import ProposerConfig
from autoresearchd.hypotheses import (
    HypothesisProposer,
    crash_insights,
    follow_up,
    give_back,
    suggested_changes,
)
from autoresearchd.memory.protocol import Note
from autoresearchd.models import Status
from autoresearchd.mutation import parse_params
from autoresearchd.proposers import ProposalContext, make_proposer

from .test_search import SMALL, never, parent, result, variant


def hypothesis(key: str, config: dict[str, object], status: str = "open") -> Note:
    value = {"title": key, "suggested_config": config, "status": status, "agent_id": "alice"}
    return Note(key=key, agent_id="alice", value=value, created_at=1.0)


def test_suggested_changes_keep_values_inside_spaces_and_coerce_json_numbers() -> None:
    params = parse_params(SMALL)
    value = {"suggested_config": {"LR": 0.02, "DEPTH": 6.0, "BATCH": 64, "NOPE": 1, "ACT": "x"}}
    assert suggested_changes(value, params) == {"LR": 0.02, "DEPTH": 6, "BATCH": 64}
    assert suggested_changes({"suggested_config": {"LR": 5.0}}, params) == {}  # out of space
    closed = {"suggested_config": {"LR": 0.02}, "status": "done"}
    assert suggested_changes(closed, params) == {}


@pytest.mark.anyio
async def test_picks_the_oldest_open_hypothesis_whose_candidate_is_fresh() -> None:
    taken = variant(LR=0.05)

    async def is_known(sha256: str) -> bool:
        return sha256 == parent(taken).sha256

    context = ProposalContext(  # newest first, as the memory lists them
        hypotheses=[
            hypothesis("newer", {"BATCH": 64}),
            hypothesis("taken", {"LR": 0.05}),
            hypothesis("closed", {"LR": 0.03}, status="done"),
            hypothesis("fresh", {"DEPTH": 6}),
        ]
    )
    proposer = HypothesisProposer(SMALL)
    candidate = await proposer.propose(parent(), is_known, context)
    assert candidate is not None
    assert candidate.proposer == "hypotheses"
    assert candidate.description == "DEPTH 4 → 6"
    later = await proposer.propose(parent(), is_known, context)
    assert later is not None and later.description == "BATCH 2**5 → 2**6"
    assert await proposer.propose(parent(), is_known, context) is None  # none twice


@pytest.mark.anyio
async def test_suggestions_for_parameters_another_device_reads_are_dropped() -> None:
    cuda_depth = SMALL.replace("# search: int 2..8", "# search: int 2..8 device=cuda")
    context = ProposalContext(
        hypotheses=[  # newest first: "only-depth" is tried first
            hypothesis("both", {"DEPTH": 6, "LR": 0.02}),
            hypothesis("only-depth", {"DEPTH": 6}),
        ],
        device="cpu",
    )
    proposer = HypothesisProposer(cuda_depth)
    candidate = await proposer.propose(parent(cuda_depth), never, context)
    assert candidate is not None
    assert candidate.description == "LR 0.01 → 0.02"  # "only-depth" skipped, DEPTH dropped
    assert await proposer.propose(parent(cuda_depth), never, context) is None
    on_gpu = await HypothesisProposer(cuda_depth).propose(
        parent(cuda_depth), never, ProposalContext(hypotheses=context.hypotheses, device="cuda")
    )
    assert on_gpu is not None and on_gpu.description == "DEPTH 4 → 6"


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


@pytest.mark.anyio
async def test_hypothesis_proposer_with_no_notes_has_nothing() -> None:
    assert await HypothesisProposer().propose(parent(), never) is None


@pytest.mark.anyio
async def test_workers_sharing_taken_keys_run_a_hypothesis_once_even_after_the_best_moved() -> None:
    # Two workers of one daemon: after the best moves, the same note gives a new candidate,
    # so only the shared set of taken keys keeps the second worker off it.
    taken: dict[str, str] = {}
    first, second = HypothesisProposer(SMALL, taken), HypothesisProposer(SMALL, taken)
    context = ProposalContext(hypotheses=[hypothesis("deeper", {"DEPTH": 6})])
    dropped = await first.propose(parent(), never, context)
    assert dropped is not None and taken == {"deeper": dropped.sha256}
    moved = parent(variant(LR=0.05))
    assert await second.propose(moved, never, context) is None
    assert await HypothesisProposer(SMALL).propose(moved, never, context) is not None
    # A candidate dropped unrun (the best moved before it ran) gives its note back.
    give_back(taken, dropped)
    again = await second.propose(moved, never, context)
    assert again is not None and again.description == "DEPTH 4 → 6"
    assert taken == {"deeper": again.sha256}


@pytest.mark.anyio
async def test_make_proposer_hands_the_taken_set_to_the_hypotheses_in_a_mix() -> None:
    taken: dict[str, str] = {}
    config = ProposerConfig(strategy="mixed", weights={"hypotheses": 1.0})
    proposer = make_proposer(config, baseline=SMALL, taken=taken)
    context = ProposalContext(hypotheses=[hypothesis("deeper", {"DEPTH": 6})])
    assert await proposer.propose(parent(), never, context) is not None
    assert list(taken) == ["deeper"]
