"""Tests for the perturb proposer: fresh candidates only, baseline spaces, exhaustion."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.config import ProposerConfig
from autoresearchd.errors import MutationError
from autoresearchd.hyperparams import parse_params
from autoresearchd.models import Candidate, sha256_text
from autoresearchd.mutation import apply_changes, sample_changes
from autoresearchd.proposers.auto import make_proposer
from autoresearchd.proposers.base import ProposalContext, Proposer
from autoresearchd.proposers.perturb import PerturbProposer

KARPATHY = (Path(__file__).parent / "fixtures" / "karpathy_train.py").read_text(encoding="utf-8")


def baseline(source: str = KARPATHY) -> Candidate:
    return Candidate(source=source, parent_sha256=None, description="baseline")


class Memory:
    """Stands in for the collective memory's ``is_known``: a set of hashes, and a call log."""

    def __init__(self, known: set[str] | None = None, everything: bool = False) -> None:
        self.known = known or set()
        self.everything = everything
        self.asked: list[str] = []

    async def is_known(self, sha256: str) -> bool:
        self.asked.append(sha256)
        return self.everything or sha256 in self.known


@pytest.mark.anyio
async def test_candidate_carries_parent_hash_description_and_proposer_name() -> None:
    parent = baseline()
    proposer = PerturbProposer(max_changes=3, rng=random.Random(1))
    candidate = await proposer.propose(parent, Memory().is_known)
    assert candidate is not None
    assert candidate.parent_sha256 == parent.sha256
    assert candidate.proposer == "perturb"
    assert candidate.sha256 == sha256_text(candidate.source)
    assert candidate.source != parent.source
    changed = {
        name
        for name, param in parse_params(candidate.source).items()
        if param.value != parse_params(parent.source)[name].value
    }
    parts = candidate.description.split(", ")
    assert 1 <= len(parts) <= 3
    assert {part.split(" ")[0] for part in parts} == changed


@pytest.mark.anyio
async def test_known_hashes_are_skipped() -> None:
    parent = baseline()
    memory = Memory()
    probe = PerturbProposer(rng=random.Random(5))
    for _ in range(5):  # the first five candidates this seed would give
        found = await probe.propose(parent, memory.is_known)
        assert found is not None
        memory.known.add(found.sha256)
    memory.asked.clear()
    candidate = await PerturbProposer(rng=random.Random(5)).propose(parent, memory.is_known)
    assert candidate is not None
    assert candidate.sha256 not in memory.known
    assert memory.asked[-1] == candidate.sha256
    assert set(memory.asked[:-1]) <= memory.known


@pytest.mark.anyio
async def test_never_proposes_the_same_source_twice_then_reports_exhaustion() -> None:
    """A space with two neighbours yields two candidates, then None and a log event."""
    parent = baseline("import os\n\nN = 2  # search: int 1..3\nNAME = 'x'\n")
    proposer = PerturbProposer(rng=random.Random(0), attempts=30)
    memory = Memory()
    first = await proposer.propose(parent, memory.is_known)
    second = await proposer.propose(parent, memory.is_known)
    assert first is not None and second is not None
    assert {first.description, second.description} == {"N 2 → 1", "N 2 → 3"}
    with capture_logs() as logs:
        assert await proposer.propose(parent, memory.is_known) is None
    assert logs == [
        {
            "event": "proposer_exhausted",
            "log_level": "warning",
            "parent": parent.sha256[:12],
            "attempts": 30,
        }
    ]


@pytest.mark.anyio
async def test_exhausted_when_everything_is_known_and_asks_at_most_attempts_times() -> None:
    memory = Memory(everything=True)
    with capture_logs() as logs:
        result = await PerturbProposer(attempts=7).propose(baseline(), memory.is_known)
    assert result is None
    assert 1 <= len(memory.asked) <= 7
    assert [entry["event"] for entry in logs] == ["proposer_exhausted"]


@pytest.mark.anyio
async def test_nothing_movable_means_exhausted_without_asking_memory() -> None:
    memory = Memory()
    proposer = PerturbProposer(attempts=5)
    assert await proposer.propose(baseline('A = "x"\nSEED = 1\n'), memory.is_known) is None
    assert memory.asked == []


@pytest.mark.anyio
async def test_baseline_spaces_bound_a_parent_that_widened_its_own_annotation() -> None:
    trusted = "LR = 0.1  # search: log 0.1..0.2\n"
    widened = baseline("LR = 0.1  # search: log 0.001..100.0\n")
    free = PerturbProposer(rng=random.Random(2), attempts=200)
    bound = PerturbProposer(rng=random.Random(2), attempts=200, baseline=trusted)
    free_values: set[float] = set()
    bound_values: set[float] = set()
    for _ in range(15):
        for proposer, values in ((free, free_values), (bound, bound_values)):
            candidate = await proposer.propose(widened, Memory().is_known)
            if candidate is not None:
                value = parse_params(candidate.source)["LR"].value
                assert isinstance(value, float)
                values.add(value)
    assert any(value < 0.1 for value in free_values)
    assert bound_values and all(0.1 <= value <= 0.2 for value in bound_values)


#: One parameter read on each device only, and one read everywhere.
BY_DEVICE = """\
DEPTH = 8  # search: int 2..16 device=cuda
CPU_DEPTH = 2  # search: int 1..6 device=cpu
LR = 0.01  # search: log 0.001..0.1
"""


async def changed_on(device: str, seeds: int = 40) -> set[str]:
    """The names seeded perturb proposals on ``device`` changed, over ``seeds`` proposals."""
    parent, names = baseline(BY_DEVICE), set()
    before = parse_params(BY_DEVICE)
    for seed in range(seeds):
        proposer = PerturbProposer(max_changes=3, rng=random.Random(seed))
        candidate = await proposer.propose(
            parent, Memory().is_known, ProposalContext(device=device)
        )
        assert candidate is not None
        after = parse_params(candidate.source)
        names |= {name for name, param in after.items() if param.value != before[name].value}
    return names


@pytest.mark.anyio
async def test_perturb_never_moves_a_parameter_another_device_reads() -> None:
    assert await changed_on("cpu") == {"CPU_DEPTH", "LR"}
    assert await changed_on("cuda") == {"DEPTH", "LR"}


@pytest.mark.anyio
async def test_perturb_on_an_unknown_device_moves_everything_as_before() -> None:
    assert await changed_on("") == {"DEPTH", "CPU_DEPTH", "LR"}
    parent, context = baseline(BY_DEVICE), ProposalContext(device="")
    for seed in range(10):
        candidate = await PerturbProposer(3, random.Random(seed)).propose(
            parent, Memory().is_known, context
        )
        changes = sample_changes(parse_params(BY_DEVICE), random.Random(seed), 3)
        assert candidate is not None
        assert candidate.source == apply_changes(BY_DEVICE, changes)


@pytest.mark.anyio
async def test_unreadable_parent_raises_mutation_error() -> None:
    with pytest.raises(MutationError, match="does not parse"):
        await PerturbProposer().propose(baseline("def (:\n"), Memory().is_known)


@pytest.mark.anyio
async def test_make_proposer_builds_a_seeded_perturb_proposer_from_config() -> None:
    config = ProposerConfig(strategy="perturb", max_changes=1)
    proposers: list[Proposer] = [make_proposer(config, rng=random.Random(9)) for _ in range(2)]
    assert all(isinstance(p, PerturbProposer) and p.max_changes == 1 for p in proposers)
    first, second = [await p.propose(baseline(), Memory().is_known) for p in proposers]
    assert first is not None and second is not None
    assert first == second
    assert ", " not in first.description
