"""A speculation: the next candidate, proposed from the run in progress as if it were kept.

One CPU worker serves on the plan stand-in (autoresearchd/testing/scripts.py), whose runs
take the scripted values in order, against a solo memory seeded with a best of 3.0 (the
baseline's own source, so the first run is a mutation of it). A keep must start the next run
with the speculation, proposed and claimed beside the run; any other verdict, a drain or
another agent's better best must free it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.gpus import Gpus
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Candidate, Device, Result, Status
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.testing import PLAN_ENV, plan_script, write_plan
from autoresearchd.worker.claims import Prepared
from autoresearchd.worker.context import WorkerContext, baseline
from autoresearchd.worker.loop import Worker
from autoresearchd.worker.speculating import asks_an_agent
from tests.memory.conformance import make_result

pytestmark = pytest.mark.anyio

TRACK = "synthetic"


@dataclass
class Watch:
    """What a worker proposed and claimed, and whether a run was in progress then: a
    proposal or claim made with no run in progress lies on the path between runs."""

    worker: Worker
    speculations: list[Candidate] = field(default_factory=list)
    claimed: list[Candidate] = field(default_factory=list)
    on_path: list[str] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        worker = self.worker
        prepare, claim = worker.prepare, worker.claims.claim
        propose_from = worker.proposing.propose_from

        async def watched_prepare() -> Prepared | None:
            self._note("prepare")
            return await prepare()

        async def watched_claim(candidate: Candidate) -> bool:
            self._note("claim")
            won = await claim(candidate)
            self.claimed += [candidate] if won else []
            return won

        async def watched_propose_from(parent: Candidate) -> Candidate | None:
            candidate = await propose_from(parent)
            self.speculations += [candidate] if candidate else []
            return candidate

        monkeypatch.setattr(worker, "prepare", watched_prepare)
        monkeypatch.setattr(worker.claims, "claim", watched_claim)
        monkeypatch.setattr(worker.proposing, "propose_from", watched_propose_from)

    def _note(self, what: str) -> None:
        if self.worker.running.started_at is None:
            self.on_path.append(what)


def a_worker(
    tmp_path: Path, memory: SqliteMemory, sleep_s: float = 0.5, **experiment: Any
) -> Worker:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    (workspace / "train.py").write_text(plan_script(sleep_s=sleep_s))
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {
                "workspace": str(workspace),
                "sandbox": "off",  # the plan stand-in writes to its plan folder
                "time_budget_s": 10.0,
                "replicates": 0,
                **experiment,
            },
        }
    )
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
    return Worker(Device.cpu(0), ctx)


async def seed_best(
    memory: SqliteMemory, worker: Worker, val_bpb: float = 3.0, lr: str = "0.01"
) -> Result:
    """Another agent's keep of the workspace's own script (with ``LR`` at ``lr``)."""
    source = baseline(worker.config).source
    kept = make_result(
        train_py=source.replace("LR = 0.01", f"LR = {lr}"),
        parent_sha256=None,
        status=Status.KEEP,
        vram_tier="cpu",
        val_bpb=val_bpb,
        confirmed_bpb=None,
        agent_id="seed",
    )
    await memory.publish(kept)
    return kept


async def serve_until(
    worker: Worker, done: Callable[[], Awaitable[bool]], timeout_s: float = 60.0
) -> None:
    """Serve ``worker``, with its publisher, until ``done`` says so; then drain it."""

    async def drain_when_done() -> None:
        while True:
            await anyio.sleep(0.05)
            if await done():
                break
        worker.ctx.draining.set()

    with anyio.fail_after(timeout_s):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.ctx.publisher.serve)
            tg.start_soon(drain_when_done)
            await worker.serve()
            await worker.ctx.publisher.drain()  # as the daemon flushes its outbox on the way out
            tg.cancel_scope.cancel()


def published(memory: SqliteMemory, count: int) -> Callable[[], Awaitable[bool]]:
    async def done() -> bool:
        return len(await memory.results(TRACK, limit=None)) >= count

    return done


async def ours(memory: SqliteMemory) -> list[Result]:
    """This worker's results, oldest first."""
    results = await memory.results(TRACK, limit=None)
    return sorted((r for r in results if r.agent_id != "seed"), key=lambda r: r.started_at)


@contextmanager
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: list[str]) -> Iterator[None]:
    write_plan(tmp_path / "plan", plan)
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    yield


async def test_after_a_keep_the_next_run_is_the_speculation_with_nothing_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with planned(tmp_path, monkeypatch, ["val=2.0", "val=2.5"]):
        async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
            worker = a_worker(tmp_path, memory)
            await seed_best(memory, worker)
            watch = Watch(worker)
            watch.install(monkeypatch)
            with capture_logs() as logs:
                await serve_until(worker, published(memory, 3))
            first, second, *_ = await ours(memory)
    assert (first.status, first.val_bpb) == (Status.KEEP, 2.0)
    speculation = watch.speculations[0]
    assert speculation.parent_sha256 == first.train_py_sha256
    assert (second.train_py_sha256, second.parent_sha256) == (
        speculation.sha256,
        first.train_py_sha256,
    )
    # Only the very first cycle proposed and claimed with no run in progress.
    assert watch.on_path == ["prepare", "claim"]
    events = [e["event"] for e in logs]
    assert "speculation_taken" in events


async def test_after_a_discard_the_speculation_is_freed_beside_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with planned(tmp_path, monkeypatch, ["val=3.5", "val=3.6", "val=3.7"]):
        async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
            worker = a_worker(tmp_path, memory)
            await seed_best(memory, worker)
            watch = Watch(worker)
            watch.install(monkeypatch)
            run, runs, freed = worker.run, [], []

            async def run_and_look(candidate: Candidate, *, stoppable: bool = False) -> Any:
                result = await run(candidate, stoppable=stoppable)
                runs.append(candidate)
                if len(runs) == 2:
                    # Still serving, the second run just over: is the first speculation free?
                    first = watch.speculations[0].sha256
                    claimed = await memory.was_run(TRACK, first)
                    freed.append(not claimed and not worker.ctx.ledger.in_flight(first))
                return result

            monkeypatch.setattr(worker, "run", run_and_look)
            await serve_until(worker, published(memory, 3))
            first, second, *_ = await ours(memory)
    speculation = watch.speculations[0]
    assert (first.status, second.status) == (Status.DISCARD, Status.DISCARD)
    assert speculation.parent_sha256 == first.train_py_sha256
    # The next run is the candidate prepared from the best, not the speculation.
    assert second.parent_sha256 == seed_sha(worker)
    assert speculation.sha256 not in {r.train_py_sha256 for r in (first, second)}
    assert freed and freed[0], "freed while the next run went on, not only at the drain"


def seed_sha(worker: Worker) -> str:
    return baseline(worker.config).sha256


async def test_a_drain_leaves_nothing_claimed_that_did_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drained while the speculation and the next candidate are held: both are freed."""
    with planned(tmp_path, monkeypatch, ["val=3.5"] * 5):
        async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
            worker = a_worker(tmp_path, memory, sleep_s=1.0)  # held well before the run ends
            await seed_best(memory, worker)
            watch = Watch(worker)
            watch.install(monkeypatch)

            async def speculation_held() -> bool:
                return worker.speculation.held is not None

            await serve_until(worker, speculation_held)
            ran = {r.train_py_sha256 for r in await ours(memory)}
            unrun = [c for c in watch.claimed if c.sha256 not in ran]
            assert watch.speculations[0] in unrun, "the speculation was held at the drain"
            assert len(unrun) == 2, "and the candidate prepared for the next run"
            for candidate in unrun:
                assert not await memory.was_run(TRACK, candidate.sha256)
    assert worker.speculation.held is None
    assert worker.ctx.ledger.sources() == ()


@pytest.mark.parametrize("moved_by_others", [False, True])
async def test_a_speculation_runs_only_while_its_parent_is_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved_by_others: bool
) -> None:
    """Our keep makes the running candidate the best; another agent's better best, arrived
    meanwhile, makes the speculation stale: it is freed and the next run builds on theirs."""
    with planned(tmp_path, monkeypatch, ["val=2.5"]):
        async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
            worker = a_worker(tmp_path, memory)
            await seed_best(memory, worker)
            running = await worker.proposing.propose(await worker.best.read())
            assert running is not None
            speculation = await worker.proposing.propose_from(running)
            assert speculation is not None and await worker.claims.claim(speculation)
            worker.speculation.held = Prepared(speculation)
            ours_kept = make_result(
                train_py=running.source, status=Status.KEEP, vram_tier="cpu", val_bpb=2.0
            )
            worker.best.kept(ours_kept)
            theirs = None
            if moved_by_others:
                theirs = await seed_best(memory, worker, val_bpb=1.9, lr="0.02")
            await worker.best.read()  # the verdict's read, after the run
            await worker.cycle()
            (ran,) = worker.ctx.outbox.pending()
            still_claimed = await memory.was_run(TRACK, speculation.sha256)
    if theirs is None:
        assert ran.train_py_sha256 == speculation.sha256
    else:
        assert ran.parent_sha256 == theirs.train_py_sha256
        assert ran.train_py_sha256 != speculation.sha256
        assert not still_claimed and not worker.ctx.ledger.in_flight(speculation.sha256)


async def test_a_keep_judged_after_replicates_runs_the_speculation_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an empty memory: the baseline (kept, the first best), candidate A's selecting
    run, two re-measures of the baseline, A's two replicates (kept), then A's speculation."""
    plan = ["val=3.0", "val=2.5", "val=3.0", "val=3.0", "val=2.9", "val=2.9", "val=2.7"]
    with planned(tmp_path, monkeypatch, plan):
        async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
            worker = a_worker(tmp_path, memory, replicates=4, incumbent_runs=3)
            watch = Watch(worker)
            watch.install(monkeypatch)
            await serve_until(worker, published(memory, len(plan)), timeout_s=120)
            results = (await ours(memory))[: len(plan)]
    a_first, a_kept, b_first = results[1], results[5], results[6]
    assert (a_kept.train_py_sha256, a_kept.status) == (a_first.train_py_sha256, Status.KEEP)
    assert b_first.train_py_sha256 == watch.speculations[0].sha256
    assert b_first.parent_sha256 == a_first.train_py_sha256
    assert watch.on_path == ["prepare", "claim"], "only the baseline's cycle, before any run"


@pytest.mark.parametrize(
    ("proposer", "asks"),
    [
        ({"strategy": "portfolio"}, False),
        ({"strategy": "command", "command": ["agent"]}, True),
        ({"strategy": "mixed", "command": ["agent"]}, True),
        ({"strategy": "mixed", "command": ["agent"], "weights": {"portfolio": 1.0}}, False),
    ],
)
def test_no_speculation_calls_an_outside_agent(proposer: dict[str, Any], asks: bool) -> None:
    """Each agent call may be a paid model call: a speculation is made only without one."""
    config = parse_config({"proposer": proposer})
    assert asks_an_agent(config.proposer) is asks


async def test_a_speculation_reuses_the_history_just_read_with_what_is_in_flight_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made right after the normal preparation, it costs the memory no second history read;
    the history-aware proposer still sees every candidate in flight, the one just claimed too."""
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        worker = a_worker(tmp_path, memory)
        await seed_best(memory, worker)
        reads, results = [], memory.results

        async def counted(track: str | None = None, limit: int | None = 100) -> list[Result]:
            reads.append(track)
            return await results(track, limit)

        monkeypatch.setattr(memory, "results", counted)
        prepared = await worker.prepare()
        assert prepared is not None and reads == [TRACK]
        proposer = worker.proposing.proposer(baseline(worker.config))
        assert proposer.uses_history
        seen, propose = [], proposer.propose

        async def watched(parent: Candidate, is_known: Any, context: Any) -> Candidate | None:
            seen.append(tuple(context.in_flight))
            return await propose(parent, is_known, context)

        monkeypatch.setattr(proposer, "propose", watched)
        speculation = await worker.proposing.propose_from(prepared.candidate)
    assert speculation is not None
    assert speculation.parent_sha256 == prepared.candidate.sha256
    assert reads == [TRACK], "no second history read"
    assert seen == [(prepared.candidate.source,)]
