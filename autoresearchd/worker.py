"""One worker per device: pull the best, propose, claim, run, judge, queue the result.

The loop never waits on the network to start its next run: results go to the durable
outbox for the publisher, the next candidate is prepared while the current one trains,
and a memory that cannot be reached degrades to the last known best and unclaimed runs.
A candidate that beats the best by ``min_improvement`` is provisional: it becomes a
``keep`` only after ``replicates`` confirming runs with other seeds keep the mean ahead
(DESIGN.md, Noise). Shared state the daemon owns arrives in a :class:`WorkerContext`.
"""

from __future__ import annotations

import math
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import structlog

from autoresearchd.config import Config
from autoresearchd.errors import (
    AutoresearchdError,
    MemoryBackendError,
    MutationError,
    ProposalError,
)
from autoresearchd.gpus import Gpus
from autoresearchd.health import DeviceHealth, FlapDetector, pause
from autoresearchd.hypotheses import crash_insights, follow_up
from autoresearchd.memory.protocol import CollectiveMemory, Note
from autoresearchd.models import Best, Candidate, Device, Result, Status, sha256_text
from autoresearchd.mutation import Param, parse_params
from autoresearchd.outbox import Outbox
from autoresearchd.proposers import ProposalContext, Proposer, make_proposer
from autoresearchd.publisher import Publisher
from autoresearchd.runner import RunReport, RunSpec, run_experiment

log = structlog.get_logger(__name__)

#: Pause after a cycle that found nothing to do, so an idle worker does not spin.
IDLE_PAUSE_S = 5.0
#: Pause after an unexpected error inside one worker; the others carry on meanwhile.
ERROR_PAUSE_S = 30.0
#: Hypotheses and insights a proposal reads; the newest matter most.
NOTES_LIMIT = 100
#: Least seconds between two insight computations of one worker.
INSIGHT_INTERVAL_S = 600.0


@dataclass
class WorkerContext:
    """What the daemon shares with its workers. ``config`` is swapped on reload."""

    config: Config
    memory: CollectiveMemory
    outbox: Outbox
    publisher: Publisher
    gpus: Gpus
    draining: anyio.Event = field(default_factory=anyio.Event)
    stop_runs: anyio.Event = field(default_factory=anyio.Event)
    software: dict[str, str] = field(default_factory=dict)
    new_seed: Callable[[], int] = field(default=lambda: random.SystemRandom().randrange(2**31))
    #: Sources of the candidates this daemon's workers run now, by hash: proposals avoid them.
    in_flight: dict[str, str] = field(default_factory=dict)


def improves(val_bpb: float | None, best: Best | None, min_improvement: float) -> bool:
    """True when ``val_bpb`` beats the best by more than ``min_improvement``."""
    if val_bpb is None or not math.isfinite(val_bpb):
        return False
    return best is None or val_bpb < best.val_bpb - min_improvement


class Worker:
    """Keeps one device busy with experiments until the daemon drains."""

    def __init__(
        self, device: Device, ctx: WorkerContext, rng: random.Random | None = None
    ) -> None:
        self.device = device
        self.ctx = ctx
        self.rng = rng or random.Random()
        self.health = DeviceHealth(ctx.gpus, ctx.draining, ctx.config.daemon.health_interval_s)
        self.flaps = FlapDetector()
        self.current: Candidate | None = None
        self.run_started_at: float | None = None
        self.last_val_bpb: float | None = None
        self._best: Best | None = None
        self._next: Candidate | None = None
        self._proposer_for: object = None
        self._proposer: Proposer | None = None
        self._flap_delay = 0.0
        self._last_keep: Result | None = None
        self._insights_at = 0.0

    @property
    def config(self) -> Config:
        return self.ctx.config

    async def serve(self) -> None:
        structlog.contextvars.bind_contextvars(device=self.device.uuid)
        log.info("worker_started", name=self.device.name, tier=self.device.tier)
        while not self.ctx.draining.is_set():
            self.device = await self.health.wait_until_ready(self.device, self.config.devices)
            if self.ctx.draining.is_set():
                break
            await self._guarded_cycle()
        log.info("worker_stopped")

    async def _guarded_cycle(self) -> None:
        try:
            await self.cycle()
        except AutoresearchdError as exc:
            log.error("worker_error", error=str(exc))
            await pause(ERROR_PAUSE_S, self.ctx.draining)
        except Exception:
            # Isolation, not retry: a bug met by one device must not stop the others.
            log.exception("worker_crashed")
            await pause(ERROR_PAUSE_S, self.ctx.draining)

    async def cycle(self) -> None:
        """One candidate, from proposal to queued results."""
        best = await self.read_best()
        candidate = self._take_prefetched(best) or await self.propose(best)
        if candidate is None:
            await pause(IDLE_PAUSE_S, self.ctx.draining)
            return
        log.info(
            "candidate_proposed",
            sha=candidate.sha256[:12],
            proposer=candidate.proposer,
            description=candidate.description,
        )
        if not await self.claim(candidate):
            return
        self.current = candidate
        self.ctx.in_flight[candidate.sha256] = candidate.source
        try:
            await self.evaluate(candidate, best)
        finally:
            self.current = None
            self.ctx.in_flight.pop(candidate.sha256, None)
            await self.release(candidate)
        await self.share(candidate, best)
        await self._maybe_back_off()

    # -- the memory, degrading gracefully when it is out of reach ------------------------

    async def read_best(self) -> Best | None:
        """The best for this device's tier, else the track's; the last known on failure."""
        track = self.config.experiment.track
        try:
            best = await self.ctx.memory.get_best(track, self.device.tier)
            self._best = best or await self.ctx.memory.get_best(track)
        except MemoryBackendError as exc:
            log.warning("best_unavailable", error=str(exc))
        return self._best

    async def is_known(self, sha256: str) -> bool:
        try:
            return await self.ctx.memory.was_run(self.config.experiment.track, sha256)
        except MemoryBackendError:
            return False  # unknown is safe: the claim is the real guard against duplicates

    async def claim(self, candidate: Candidate) -> bool:
        track, agent = self.config.experiment.track, self.config.daemon.agent
        try:
            won = await self.ctx.memory.claim(
                track, candidate.sha256, agent, self.config.claim_ttl_s
            )
        except MemoryBackendError as exc:
            # The network is additive, never blocking: run unclaimed rather than idle.
            log.warning("claim_unavailable", sha=candidate.sha256[:12], error=str(exc))
            return True
        if won:
            log.info("claim_acquired", sha=candidate.sha256[:12])
        else:
            log.info("claim_lost", sha=candidate.sha256[:12])
        return won

    async def release(self, candidate: Candidate) -> None:
        track, agent = self.config.experiment.track, self.config.daemon.agent
        with anyio.CancelScope(shield=True):
            try:
                await self.ctx.memory.release(track, candidate.sha256, agent)
            except MemoryBackendError as exc:
                log.warning("release_failed", sha=candidate.sha256[:12], error=str(exc))

    # -- proposing -------------------------------------------------------------------

    def baseline(self) -> Candidate:
        script = self.config.experiment.workspace / self.config.experiment.script
        source = script.read_text(encoding="utf-8")
        return Candidate(source=source, parent_sha256=None, description="baseline")

    def proposer(self) -> Proposer:
        if self._proposer is None or self._proposer_for != self.config.proposer:
            # experiment.trust may not exist yet in every config version: params-only then.
            trust = getattr(self.config.experiment, "trust", "params-only")
            self._proposer = make_proposer(
                self.config.proposer, self.rng, baseline=self.baseline().source, trust=trust
            )
            self._proposer_for = self.config.proposer
        return self._proposer

    async def proposal_context(self, proposer: Proposer) -> ProposalContext:
        """The swarm's history and in-flight candidates; empty when the memory fails."""
        in_flight = tuple(self.ctx.in_flight.values())
        if not proposer.uses_history:
            return ProposalContext(in_flight=in_flight)
        memory, track = self.ctx.memory, self.config.experiment.track
        try:
            results = await memory.results(track, limit=self.config.proposer.max_history)
            hypotheses = await memory.notes("hypotheses", NOTES_LIMIT)
            insights = await memory.notes("insights", NOTES_LIMIT)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            return ProposalContext(in_flight=in_flight)
        mine = [n for n in hypotheses if n.value.get("track", track) == track]
        return ProposalContext(results, in_flight, mine, insights)

    async def propose(self, best: Best | None) -> Candidate | None:
        baseline = self.baseline()
        if best is None and not await self.is_known(baseline.sha256):
            return baseline
        parent = (
            baseline
            if best is None
            else Candidate(
                source=best.train_py,
                parent_sha256=None,
                description="best",
                sha256=best.train_py_sha256,
            )
        )
        proposer = self.proposer()
        context = await self.proposal_context(proposer)
        try:
            return await proposer.propose(parent, self.is_known, context)
        except ProposalError as exc:
            log.warning(
                "proposal_failed", proposer=exc.proposer, outcome=exc.outcome, error=str(exc)
            )
            await self.queue(self.failed_proposal(exc, parent))
            return None

    def failed_proposal(self, exc: ProposalError, parent: Candidate) -> Result:
        """A proposer's failure as a result: no run, its reason in ``error``."""
        now = time.time()
        return Result(
            id=f"{self.config.daemon.agent}-{uuid.uuid4().hex[:12]}",
            agent_id=self.config.daemon.agent,
            track=self.config.experiment.track,
            status=Status.INVALID if exc.outcome == "invalid" else Status.CRASH,
            val_bpb=None,
            description=f"{exc.proposer} proposal failed",
            train_py=exc.source,
            train_py_sha256=sha256_text(exc.source),
            parent_sha256=parent.sha256,
            seed=0,
            device_name=self.device.name,
            device_uuid=self.device.uuid,
            memory_gb=self.device.memory_gb,
            vram_tier=self.device.tier,
            started_at=now,
            completed_at=now,
            duration_s=0.0,
            proposer=exc.proposer,
            error=str(exc),
            software=self.ctx.software,
        )

    # -- sharing what we learned -------------------------------------------------------

    async def share(self, candidate: Candidate, best: Best | None) -> None:
        """Publish a follow-up hypothesis after a keep, and insights now and then."""
        if not self.config.proposer.share_notes:
            return
        kept, self._last_keep = self._last_keep, None
        notes: list[tuple[str, Note]] = []
        now = time.time()
        if kept is not None and best is not None and kept.train_py_sha256 == candidate.sha256:
            spaces = self.proposer_spaces()
            note = follow_up(best.train_py, kept, self.config.daemon.agent, now, spaces)
            notes += [("hypotheses", note)] if note else []
        if now - self._insights_at >= INSIGHT_INTERVAL_S:
            self._insights_at = now
            notes += [("insights", n) for n in await self.insights(now)]
        for kind, note in notes:
            await self.put_note(kind, note)

    def proposer_spaces(self) -> dict[str, Param] | None:
        try:
            return parse_params(self.baseline().source)
        except (OSError, MutationError):
            return None

    async def insights(self, now: float) -> list[Note]:
        track = self.config.experiment.track
        try:
            results = await self.ctx.memory.results(track, limit=self.config.proposer.max_history)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            return []
        if not results:
            return []
        baseline = self.baseline().source
        found = await anyio.to_thread.run_sync(
            crash_insights, results, self.config.daemon.agent, now, baseline
        )
        return list(found)

    async def put_note(self, kind: str, note: Note) -> None:
        try:
            created = await self.ctx.memory.put_note(kind, note)
        except MemoryBackendError as exc:
            log.warning("note_unpublished", kind=kind, error=str(exc))
            return
        if created:
            log.info("note_published", kind=kind, key=note.key, title=note.value.get("title"))

    def _take_prefetched(self, best: Best | None) -> Candidate | None:
        candidate, self._next = self._next, None
        parent_sha = best.train_py_sha256 if best else None
        if candidate is not None and candidate.parent_sha256 in (parent_sha, None):
            return candidate
        return None

    async def _prefetch(self, best: Best | None) -> None:
        try:
            self._next = await self.propose(best)
        except AutoresearchdError as exc:
            log.warning("prefetch_failed", error=str(exc))

    # -- running and judging ---------------------------------------------------------

    async def evaluate(self, candidate: Candidate, best: Best | None) -> None:
        """Run a candidate, and its replicates when it looks like an improvement."""
        result = await self.run_with_prefetch(candidate, best)
        if result is None:
            return
        min_improvement = self.config.experiment.min_improvement
        if result.status is not Status.DISCARD or not improves(
            result.val_bpb, best, min_improvement
        ):
            await self.queue(result)
        elif best is None or self.config.experiment.replicates == 0:
            await self.queue(result.with_(status=Status.KEEP, confirmed_bpb=result.val_bpb))
        else:
            await self.replicate(candidate, result)

    async def replicate(self, candidate: Candidate, first: Result) -> None:
        """Confirm a provisional improvement with more seeds before calling it a keep."""
        await self.queue(first.with_(provisional=True))
        values = [first.val_bpb]
        last = self.config.experiment.replicates
        for n in range(1, last + 1):
            if self.ctx.draining.is_set():
                return
            log.info("replicate_started", sha=candidate.sha256[:12], replicate=n)
            result = await self.run(candidate, await self.read_best())
            if result is None:
                return
            if result.status is not Status.DISCARD:
                await self.queue(result)  # a crash or timeout ends the replication
                return
            values.append(result.val_bpb)
            if n == last:
                await self.confirm(result, values)
            else:
                await self.queue(result.with_(provisional=True))

    async def confirm(self, last: Result, values: list[float | None]) -> None:
        mean = statistics.fmean(v for v in values if v is not None)
        best = await self.read_best()
        if improves(mean, best, self.config.experiment.min_improvement):
            delta = None if best is None else mean - best.val_bpb
            await self.queue(
                last.with_(status=Status.KEEP, confirmed_bpb=mean, delta_vs_best=delta)
            )
        else:
            log.info("replication_failed", mean_val_bpb=mean, runs=len(values))
            await self.queue(last)

    async def run_with_prefetch(self, candidate: Candidate, best: Best | None) -> Result | None:
        """Run ``candidate`` while the next candidate is prepared alongside."""
        result: Result | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._prefetch, best)
            result = await self.run(candidate, best)
        return result

    async def run(self, candidate: Candidate, best: Best | None) -> Result | None:
        run_id = f"{self.config.daemon.agent}-{uuid.uuid4().hex[:12]}"
        seed = self.ctx.new_seed()
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            self.run_started_at = time.time()
            report = await run_experiment(
                self.spec(run_id, candidate, seed), stop=self.ctx.stop_runs
            )
        finally:
            self.run_started_at = None
            structlog.contextvars.unbind_contextvars("run_id")
        return self.record(candidate, report, seed, best)

    def spec(self, run_id: str, candidate: Candidate, seed: int) -> RunSpec:
        return RunSpec.from_config(
            self.config.experiment,
            run_root=self.config.run_dir,
            run_id=run_id,
            candidate=candidate,
            device=self.device,
            seed=seed,
        )

    def record(
        self, candidate: Candidate, report: RunReport, seed: int, best: Best | None
    ) -> Result | None:
        """Turn a run into a result; a run stopped by shutdown is no result at all."""
        log.info(
            "run_finished",
            run_id=report.run_id,
            status=report.outcome,
            val_bpb=report.summary.val_bpb if report.summary else None,
            duration_s=round(report.duration_s, 2),
            error=report.error or None,
        )
        self._flap_delay = self.flaps.record(report.outcome == "crash", report.duration_s)
        if report.outcome == "stopped":
            return None
        return self.build_result(candidate, report, seed, best)

    def build_result(
        self, candidate: Candidate, report: RunReport, seed: int, best: Best | None
    ) -> Result:
        summary = report.summary
        val = summary.val_bpb if summary and report.outcome == "ok" else None
        self.last_val_bpb = val if val is not None else self.last_val_bpb
        status = {"ok": Status.DISCARD, "timeout": Status.TIMEOUT}.get(report.outcome, Status.CRASH)
        return Result(
            id=report.run_id,
            agent_id=self.config.daemon.agent,
            track=self.config.experiment.track,
            status=status,
            val_bpb=val,
            description=candidate.description,
            train_py=candidate.source,
            train_py_sha256=candidate.sha256,
            parent_sha256=candidate.parent_sha256,
            seed=seed,
            device_name=self.device.name,
            device_uuid=self.device.uuid,
            memory_gb=self.device.memory_gb,
            vram_tier=self.device.tier,
            started_at=report.started_at,
            completed_at=report.completed_at,
            duration_s=report.duration_s,
            delta_vs_best=None if val is None or best is None else val - best.val_bpb,
            metrics=dict(summary.metrics) if summary else {},
            proposer=candidate.proposer,
            error=report.error,
            software=self.ctx.software,
        )

    async def queue(self, result: Result) -> None:
        """Durably queue a result for the publisher, then wake it."""
        with anyio.CancelScope(shield=True):  # a result half-handled is a result lost
            await anyio.to_thread.run_sync(self.ctx.outbox.put, result)
        self.ctx.publisher.notify()
        if result.status is Status.KEEP:
            self._last_keep = result
        log.info(
            "result_queued",
            result_id=result.id,
            status=str(result.status),
            val_bpb=result.val_bpb,
            provisional=result.provisional,
        )

    async def _maybe_back_off(self) -> None:
        delay, self._flap_delay = self._flap_delay, 0.0
        if delay:
            self.health.state = "backing_off"
            log.warning(
                "worker_backoff", reason="flapping", delay_s=delay, crashes=self.flaps.streak
            )
            await pause(delay, self.ctx.draining)
