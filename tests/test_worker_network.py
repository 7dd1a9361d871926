"""How a worker shares work through a memory: a seeded best, a hub out of reach, claims."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.gpus import Gpus
from autoresearchd.judging import delta_vs_best, improves
from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.memory.protocol import CollectiveMemory
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Best, Device
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.testing import ok_script, plan_script
from autoresearchd.worker.claims import Prepared
from autoresearchd.worker.context import WorkerContext, baseline
from autoresearchd.worker.loop import Worker

from .hub.support import free_port


def best(val_bpb: float) -> Best:
    return Best("synthetic", None, val_bpb, "LR = 0.01\n", "sha", "", "admin", 0.0)


SEEDED = best(math.inf)  # what EnsueMemory.get_best returns for `hub init --baseline`


@pytest.mark.parametrize("val_bpb", [3.0, 1e300])
def test_any_finite_score_improves_on_a_seeded_baseline(val_bpb: float) -> None:
    assert improves(val_bpb, SEEDED, 0.001)


@pytest.mark.parametrize("val_bpb", [None, math.nan, math.inf])
def test_no_score_never_improves(val_bpb: float | None) -> None:
    assert not improves(val_bpb, SEEDED, 0.001)
    assert not improves(val_bpb, None, 0.001)


def test_improvement_must_exceed_the_margin() -> None:
    assert improves(2.9, best(3.0), 0.01)
    assert not improves(2.995, best(3.0), 0.01)


def test_delta_against_a_scored_best() -> None:
    delta = delta_vs_best(2.9, best(3.0))
    assert delta is not None
    assert delta == pytest.approx(-0.1)


@pytest.mark.parametrize(("val_bpb", "against"), [(2.9, SEEDED), (2.9, None), (None, best(3.0))])
def test_no_delta_without_two_finite_scores(val_bpb: float | None, against: Best | None) -> None:
    """An infinite delta would make the published record invalid JSON."""
    delta = delta_vs_best(val_bpb, against)
    assert delta is None
    json.dumps({"delta_vs_best": delta}, allow_nan=False)


@pytest.mark.anyio
async def test_a_worker_that_cannot_reach_the_hub_runs_the_baseline_once(tmp_path: Path) -> None:
    """Offline, ``was_run`` cannot tell; the worker explores mutations of it next."""
    (tmp_path / "train.py").write_text(plan_script())
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {"workspace": str(tmp_path)},
        }
    )
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    memory = EnsueMemory(url, "test", "key", primary_track="synthetic", attempts=1)
    outbox = Outbox(tmp_path / "outbox")
    async with memory:
        ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
        worker = Worker(Device.cpu(0), ctx)
        with capture_logs() as logs:
            first = await worker.proposing.propose(await worker.best.read())
            later = [await worker.proposing.propose(await worker.best.read()) for _ in range(3)]
    assert "best_unavailable" in [entry["event"] for entry in logs]
    assert first is not None
    assert first.description == "baseline"
    for candidate in later:
        assert candidate is not None
        assert candidate.parent_sha256 == first.sha256
        assert candidate.sha256 != first.sha256


@pytest.mark.anyio
async def test_a_claim_outlives_a_run_whose_result_is_not_yet_published(tmp_path: Path) -> None:
    """Releasing it before the publisher stores the result would let another agent rerun it."""
    (tmp_path / "train.py").write_text(ok_script())
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {"workspace": str(tmp_path), "time_budget_s": 30},
        }
    )
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
        worker = Worker(Device.cpu(0), ctx)
        await worker.cycle()  # no publisher runs, so the result stays queued
        (queued,) = outbox.pending()
        assert not await memory.claim("synthetic", queued.train_py_sha256, "other", 60.0)
        assert await memory.was_run("synthetic", queued.train_py_sha256)


@pytest.mark.anyio
async def test_a_best_that_could_not_be_read_is_unknown_not_absent(tmp_path: Path) -> None:
    """Offline at start, the first good result must still replicate: a hub that asks for
    confirmations would never promote an unreplicated keep."""
    (tmp_path / "train.py").write_text(ok_script())
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {"workspace": str(tmp_path), "time_budget_s": 30, "replicates": 1},
        }
    )
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    memory = EnsueMemory(url, "test", "key", primary_track="synthetic", attempts=1)
    async with memory:
        ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
        worker = Worker(Device.cpu(0), ctx)
        await worker.cycle()
    results = outbox.pending()
    assert len(results) == 2, "the first good run was replicated"
    first, confirming = results
    assert first.provisional and first.status == "discard"
    assert confirming.status == "keep"
    # The selecting run is never its own confirmation: only the fresh replicate counts.
    assert confirming.confirmed_bpb == pytest.approx(confirming.val_bpb)


@pytest.mark.anyio
async def test_the_very_first_result_is_kept_at_once_when_the_memory_says_no_best(
    tmp_path: Path,
) -> None:
    (tmp_path / "train.py").write_text(ok_script())
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {"workspace": str(tmp_path), "time_budget_s": 30, "replicates": 1},
        }
    )
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
        await Worker(Device.cpu(0), ctx).cycle()
    (only,) = outbox.pending()
    assert only.status == "keep" and only.description == "baseline"


def a_worker(tmp_path: Path, memory: CollectiveMemory, device: Device | None = None) -> Worker:
    """A worker on ``device`` (a CPU slot by default) running ok_script() against ``memory``."""
    (tmp_path / "train.py").write_text(ok_script())
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {"workspace": str(tmp_path)},
        }
    )
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
    return Worker(device or Device.cpu(0), ctx)


@pytest.mark.anyio
async def test_a_pause_after_a_resume_really_waits(tmp_path: Path) -> None:
    """Resuming once must not leave the next pause (or finish) spinning without waiting."""
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        worker = a_worker(tmp_path, memory)
        worker.command("resume")
        worker.current = baseline(worker.config)
        worker.command("finish")  # during a run: it pauses once the run is over
        worker.current = None
        with anyio.move_on_after(0.3) as waited:
            await worker.control.hold_while_paused(worker.claims.release_all)
        assert waited.cancelled_caught, "a paused worker waits for resume"


@pytest.mark.anyio
async def test_a_finish_while_nothing_runs_starts_no_run_only_to_stop_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finish`` between runs pauses before the next one starts, not by stopping it."""
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        worker = a_worker(tmp_path, memory)
        prepare = worker.prepare

        async def finished_meanwhile() -> Prepared | None:
            ready = await prepare()
            worker.command("finish")  # the control socket's finish lands while the claim is made
            return ready

        monkeypatch.setattr(worker, "prepare", finished_meanwhile)
        with capture_logs() as logs:
            await worker.cycle()
        assert worker.control.paused and worker.state == "paused"
        assert "run_finished" not in [e["event"] for e in logs], "no run was started"
        held = worker.claims.prepared
        assert held is not None and held.candidate.description == "baseline"
        worker.command("resume")
        with capture_logs() as logs:
            await worker.cycle()
        (run,) = [e for e in logs if e["event"] == "run_finished"]
        assert run["status"] == "ok", "after resume the held candidate runs to its end"


@pytest.mark.anyio
async def test_a_crashing_prefetch_costs_only_the_next_proposal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        worker = a_worker(tmp_path, memory)

        async def broken() -> None:
            raise RuntimeError("a bug in a proposer")

        monkeypatch.setattr(worker, "prepare", broken)
        done = anyio.Event()
        with capture_logs() as logs:
            await worker._alongside_run(done)
    assert done.is_set()
    assert [e["event"] for e in logs] == ["prefetch_crashed"]
