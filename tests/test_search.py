"""The TPE proposer: history read back through the parameters, crashes and in-flight runs."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from autoresearchd.config import ProposerConfig
from autoresearchd.hyperparams import parse_params
from autoresearchd.models import Candidate, Status
from autoresearchd.mutation import apply_changes
from autoresearchd.proposers import history as history_module
from autoresearchd.proposers.auto import make_proposer
from autoresearchd.proposers.base import ProposalContext
from autoresearchd.proposers.history import HistoryReader
from autoresearchd.proposers.perturb import PerturbProposer
from autoresearchd.proposers.tpe import SearchSpace, TpeProposer, import_optuna

from .proposer_support import never, result

ANNOTATED = (Path(__file__).parent / "fixtures" / "annotated_train.py").read_text()
SMALL = """\
import os

LR = 0.01  # search: log 0.001..0.1
DEPTH = 4  # search: int 2..8
BATCH = 2**5  # search: pow2 3..8
ACT = "relu"  # search: choice "relu" "gelu"
NAME = "run"
print(os.getpid(), LR, DEPTH, BATCH, ACT)
"""


def parent(source: str = SMALL) -> Candidate:
    return Candidate(source=source, parent_sha256=None, description="baseline")


def variant(**changes: Any) -> str:
    return apply_changes(SMALL, changes)


def test_history_maps_sources_back_to_values_and_skips_other_code() -> None:
    reader = HistoryReader()
    skeleton = reader.reading(SMALL)
    assert skeleton is not None
    assert reader.values(skeleton.skeleton, variant(LR=0.02, BATCH=2**6)) == {
        "LR": 0.02,
        "DEPTH": 4,
        "BATCH": 64,
        "ACT": "relu",
        "NAME": "run",
    }
    changed_code = SMALL.replace("print(os.getpid()", "print(os.getppid()")
    assert reader.values(skeleton.skeleton, changed_code) is None
    assert reader.values(skeleton.skeleton, SMALL.replace("2**5", "32")) is None
    assert reader.values(skeleton.skeleton, "def broken(:\n") is None


def test_space_handles_log_int_pow2_and_choice_both_ways() -> None:
    space = SearchSpace(parse_params(ANNOTATED), import_optuna())
    assert "SEQ_LEN" not in space.params  # fixed
    values = {name: param.value for name, param in parse_params(ANNOTATED).items()}
    encoded = space.encode(values)
    assert encoded is not None
    assert encoded["TOTAL_BATCH_SIZE"] == 14  # searched by exponent
    assert space.decode(encoded)["TOTAL_BATCH_SIZE"] == 2**14
    assert space.decode(encoded)["WINDOW_PATTERN"] == "SSSL"
    assert space.encode({**values, "MATRIX_LR": 0.9}) is None  # outside log 0.005..0.2


def test_crashes_count_as_the_worst_value_and_invalid_results_are_skipped() -> None:
    proposer = TpeProposer(random.Random(0))
    space = SearchSpace(parse_params(SMALL), proposer._optuna)
    reading = proposer.history.reading(SMALL)
    assert reading is not None
    results = [
        result(variant(LR=0.02), 1.5, n=1),
        result(variant(LR=0.03), 1.2, n=2),
        result(variant(DEPTH=8), None, Status.CRASH, n=3),
        result(variant(DEPTH=7), None, Status.INVALID, n=4),
        result(SMALL.replace("os.getpid()", "0"), 0.5, n=5),  # other code: skipped
    ]
    trials = proposer.trials(reading.skeleton, space, results)
    assert [(t.params["DEPTH"], t.value) for t in trials] == [(4, 1.5), (4, 1.2), (8, 1.5)]


def test_a_run_stopped_early_counts_as_the_worst_value() -> None:
    proposer = TpeProposer(random.Random(0))
    space = SearchSpace(parse_params(SMALL), proposer._optuna)
    reading = proposer.history.reading(SMALL)
    assert reading is not None
    stopped = result(variant(DEPTH=6), None, n=2).with_(stopped_early=0.3)
    results = [result(variant(LR=0.02), 1.5, n=1), stopped, result(variant(LR=0.03), 1.2, n=3)]
    trials = proposer.trials(reading.skeleton, space, results)
    assert [(t.params["DEPTH"], t.value) for t in trials] == [(4, 1.5), (6, 1.5), (4, 1.2)]


@pytest.mark.anyio
async def test_learns_from_history_and_never_proposes_a_known_candidate() -> None:
    """With a history favouring high LR, proposals concentrate there; none is a known hash."""
    rng = random.Random(3)
    history = []
    for n in range(60):
        lr = float(f"{10 ** rng.uniform(-3, -1):.3g}")
        history.append(result(variant(LR=lr, DEPTH=rng.randint(2, 8)), 2.0 - lr * 10, n=n))
    known = {r.train_py_sha256 for r in history}

    async def is_known(sha256: str) -> bool:
        return sha256 in known

    proposer = TpeProposer(random.Random(1))
    context = ProposalContext(results=history)
    lrs: list[float] = []
    for _ in range(10):
        candidate = await proposer.propose(parent(), is_known, context)
        assert candidate is not None
        assert candidate.sha256 not in known
        assert candidate.proposer == "tpe"
        known.add(candidate.sha256)
        proposed = parse_params(candidate.source)["LR"].value
        assert isinstance(proposed, float)
        lrs.append(proposed)
    assert sorted(lrs)[5] > 0.03  # median well above the log-uniform median (0.01)


def test_learns_only_from_results_of_the_workers_tier() -> None:
    proposer = TpeProposer(random.Random(0))
    space = SearchSpace(parse_params(SMALL), proposer._optuna)
    cpu = result(variant(LR=0.02), 3.0, n=1)
    large = dataclasses.replace(result(variant(LR=0.03), 1.0, n=2), vram_tier="large")
    context = ProposalContext(results=[cpu, large], tier="large")
    study = proposer._study(parent(), space, context)
    assert [t.value for t in study.trials] == [1.0]
    everything = proposer._study(parent(), space, ProposalContext(results=[cpu, large]))
    assert [t.value for t in everything.trials] == [3.0, 1.0]  # tier unknown: all of them


@pytest.mark.anyio
async def test_in_flight_candidates_become_running_trials() -> None:
    proposer = TpeProposer(random.Random(0))
    space = SearchSpace(parse_params(SMALL), proposer._optuna)
    busy = variant(LR=0.05)
    context = ProposalContext(results=[result(variant(LR=0.02), 1.0)], in_flight=[busy, "x = ("])
    study = proposer._study(parent(), space, context)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "RUNNING"]
    assert study.trials[1].params["LR"] == 0.05


@pytest.mark.anyio
async def test_falls_back_to_perturb_when_samples_are_all_known() -> None:
    """A six-point space: five fresh candidates, then TPE falls back and perturb is exhausted."""
    source = "A = 2  # search: int 1..3\nB = 'x'  # search: choice 'x' 'y'\n"
    seen: set[str] = set()

    async def is_known(sha256: str) -> bool:
        return sha256 in seen

    proposer = TpeProposer(random.Random(0), attempts=5)
    found = []
    with capture_logs() as logs:
        for _ in range(6):
            candidate = await proposer.propose(parent(source), is_known)
            if candidate is None:
                break
            seen.add(candidate.sha256)
            found.append(candidate)
    assert len({c.sha256 for c in found}) == len(found) == 5
    events = [entry["event"] for entry in logs]
    assert events[-2:] == ["tpe_fallback", "proposer_exhausted"]


#: SMALL with DEPTH read on CUDA only.
CUDA_DEPTH = SMALL.replace("# search: int 2..8", "# search: int 2..8 device=cuda")


async def depths_on(device: str) -> set[object]:
    """DEPTH in a few TPE proposals on ``device``, learning from a history where it varies."""
    rng = random.Random(5)
    history = [
        result(apply_changes(CUDA_DEPTH, {"LR": 0.002 * (n + 1), "DEPTH": 2 + n % 7}), 1.5, n=n)
        for n in range(15)
    ]
    proposer, context = TpeProposer(rng), ProposalContext(results=history, device=device)
    depths = set()
    for _ in range(6):
        candidate = await proposer.propose(parent(CUDA_DEPTH), never, context)
        assert candidate is not None
        depths.add(parse_params(candidate.source)["DEPTH"].value)
    return depths


@pytest.mark.anyio
async def test_tpe_never_moves_a_parameter_another_device_reads() -> None:
    assert await depths_on("cpu") == {4}
    assert len(await depths_on("cuda")) > 1


@pytest.mark.anyio
async def test_tpe_falls_back_to_a_perturb_that_keeps_to_the_device() -> None:
    """On a CPU only A moves: two candidates, then neither TPE nor its fallback touches B."""
    source = "A = 2  # search: int 1..3\nB = 5  # search: int 1..9 device=cuda\n"
    seen: set[str] = set()

    async def is_known(sha256: str) -> bool:
        return sha256 in seen

    proposer, context = TpeProposer(random.Random(0), attempts=5), ProposalContext(device="cpu")
    found = []
    with capture_logs() as logs:
        while (candidate := await proposer.propose(parent(source), is_known, context)) is not None:
            seen.add(candidate.sha256)
            found.append(candidate.description)
    assert sorted(found) == ["A 2 → 1", "A 2 → 3"]
    assert [entry["event"] for entry in logs][-2:] == ["tpe_fallback", "proposer_exhausted"]


@pytest.mark.anyio
async def test_history_is_capped_and_each_source_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(0)
    history = [
        result(variant(LR=float(f"{10 ** rng.uniform(-3, -1):.4g}"), DEPTH=rng.randint(2, 8)), 1.0)
        for _ in range(2000)
    ]
    proposer = TpeProposer(random.Random(0), max_history=1000)
    read: list[str] = []
    original = history_module.read_source

    def reading(text: str) -> history_module.Reading | None:
        read.append(text)
        return original(text)

    monkeypatch.setattr(history_module, "read_source", reading)
    assert await proposer.propose(parent(), never, ProposalContext(results=history))
    assert len(read) == 1 + len({r.train_py_sha256 for r in history[:1000]})  # capped history
    read.clear()
    assert await proposer.propose(parent(), never, ProposalContext(results=history))
    assert read == []  # every source, parent included, is read once and cached by hash


def test_make_proposer_falls_back_to_perturb_without_optuna(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes ``import optuna`` fail
    with capture_logs() as logs:
        proposer = make_proposer(ProposerConfig(strategy="tpe"))
    assert isinstance(proposer, PerturbProposer)
    assert [e["event"] for e in logs] == ["strategy_unavailable"]
    assert logs[0]["fallback"] == "perturb"
