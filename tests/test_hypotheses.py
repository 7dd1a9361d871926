"""The ``hypotheses`` strategy: picking the oldest open hypothesis, and giving one back."""

from __future__ import annotations

import pytest

from autoresearchd.config import ProposerConfig
from autoresearchd.hyperparams import parse_params
from autoresearchd.models import Note
from autoresearchd.proposers.auto import make_proposer
from autoresearchd.proposers.base import ProposalContext
from autoresearchd.proposers.hypotheses import HypothesisProposer, give_back, suggested_changes

from .proposer_support import never
from .test_search import SMALL, parent, variant


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
