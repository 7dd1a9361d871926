"""One worker per device: pull the best, propose, claim, run, judge, queue the result.

The loop never waits on the network to start its next run: results go to the durable
outbox for the publisher, beside the next run (:mod:`~autoresearchd.worker.afterrun`), the
next candidate is prepared while the current one trains (and another from the running
candidate, for a keep: :mod:`~autoresearchd.worker.speculating`), and a memory that cannot
be reached degrades to the last known best and unclaimed runs.
The worker orchestrates the cycle; each concern it builds on owns its own state beside
it: its claims (:mod:`~autoresearchd.worker.claims`), its view of the best
(:mod:`~autoresearchd.worker.best`), proposing, running, replication, confirmations of
other agents' claims, and its mode (:mod:`~autoresearchd.worker.modes`). What the daemon's
workers share arrives in a :class:`~autoresearchd.worker.context.WorkerContext`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import structlog

from autoresearchd.backoff import sleep_unless
from autoresearchd.config import Config
from autoresearchd.errors import AutoresearchdError
from autoresearchd.health import DeviceHealth
from autoresearchd.judging import delta_vs_best
from autoresearchd.models import Best, Candidate, Device, Result, Status
from autoresearchd.parents import Parents
from autoresearchd.sharing import Sharing
from autoresearchd.worker.afterrun import AfterRun
from autoresearchd.worker.best import BestView
from autoresearchd.worker.claims import Claims, Prepared
from autoresearchd.worker.confirming import Confirming
from autoresearchd.worker.context import WorkerContext, baseline
from autoresearchd.worker.modes import DeviceControl
from autoresearchd.worker.proposing import Proposing
from autoresearchd.worker.replication import Replication
from autoresearchd.worker.running import Running
from autoresearchd.worker.speculating import Speculating
from autoresearchd.worker.status import DeviceStatus, ExperimentStatus

log = structlog.get_logger(__name__)

#: Pause after a cycle that found nothing to do, so an idle worker does not spin.
IDLE_PAUSE_S = 5.0
#: Pause after an unexpected error inside one worker; the others carry on meanwhile.
ERROR_PAUSE_S = 30.0
#: Proposals to try in one go when other workers keep winning the claims.
CLAIM_ATTEMPTS = 3
#: Longest wait for the best before a finished result is judged against the last one known:
#: the result must reach the outbox promptly, whatever the network does.
BEST_READ_TIMEOUT_S = 5.0


class Worker:
    """Keeps one device busy with experiments until the daemon drains."""

    def __init__(
        self, device: Device, ctx: WorkerContext, rng: random.Random | None = None
    ) -> None:
        self.device = device
        self.ctx = ctx
        self.rng = rng or random.Random()
        self.health = DeviceHealth(ctx.gpus, ctx.draining, ctx.config.daemon.health_interval_s)
        self.control = DeviceControl(ctx.draining, ctx.stop_runs)
        self.best = BestView(self)
        self.claims = Claims(self)
        self.proposing = Proposing(self)
        self.speculation = Speculating(self)
        self.running = Running(self)
        self.replication = Replication(self)
        self.confirming = Confirming(self)
        self.sharing = Sharing(ctx.memory, lambda: baseline(self.config).source)
        #: The candidate being evaluated (with its replicates), or a confirmation.
        self.current: Candidate | None = None
        self.results_queued = 0
        #: Queueing results durably and sharing notes, beside the next run.
        self.after_run = AfterRun()
        self._background: anyio.abc.TaskGroup | None = None
        self._prefetched: anyio.Event | None = None

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def parents(self) -> Parents:
        return self.proposing.parents

    async def serve(self) -> None:
        structlog.contextvars.bind_contextvars(device=self.device.uuid)
        log.info("worker_started", name=self.device.name, tier=self.device.tier)
        # The next candidate is prepared in this group, so a run never waits for it.
        async with anyio.create_task_group() as self._background:
            self.after_run.attach(self._background)
            while not self.ctx.draining.is_set():
                await self._guarded(self._step)
            await self.after_run.settled()  # every result queued before the daemon drains
            self.after_run.attach(None)
            self._background.cancel_scope.cancel()
        await self._release_all()
        log.info("worker_stopped")

    async def _step(self) -> None:
        if self.control.halted:
            await self.ctx.draining.wait()  # every run would fail the same way: stay put
            return
        await self.control.hold_while_paused(self._release_all)
        self.device = await self.health.wait_until_ready(self.device, self.config.devices)
        if not self.ctx.draining.is_set() and not self.control.paused:
            await self.cycle()

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except* AutoresearchdError as group:
            for exc in group.exceptions:
                log.error("worker_error", error=str(exc))
            await sleep_unless(ERROR_PAUSE_S, self.ctx.draining)
        except* Exception:
            # Isolation, not retry: a bug met by one device must not stop the others.
            log.exception("worker_crashed")
            await sleep_unless(ERROR_PAUSE_S, self.ctx.draining)

    async def cycle(self) -> None:
        """One candidate, from proposal to queued results (or, at times, a rerun of
        another agent's claim: :mod:`autoresearchd.worker.confirming`)."""
        if await self.confirming.turn():
            return
        if self._prefetched is not None:
            await self._prefetched.wait()  # the next candidate, if one is being prepared
        await self.speculation.settled()
        ready = await self.claims.renew(self._take_next())
        key = self.running.key(ready.candidate) if ready else None
        ending = self.running.standby.keep_only(key)
        if ending is not None and self._background is not None:
            self.beside(ending)  # off the path to the next run
        elif ending is not None:
            await ending()
        if ready is None:
            # Claims of candidates dropped unrun still count as runs (``was_run`` sees live
            # claims): free them first, or a fresh proposal of the same source looks known.
            await self.claims.release_dropped()
            ready = await self.prepare()
        if ready is None:
            await sleep_unless(IDLE_PAUSE_S, self.ctx.draining)
            return
        if self.control.paused:
            # Paused (or finished with nothing running) while it prepared: a run started
            # now would only be stopped at once. The next step's pause frees its claim.
            self.claims.prepared = ready
            return
        await self._evaluate(ready)
        config = self.config
        await self.after_run.then(
            lambda: self.sharing.share(config, ready.candidate, ready.parent_best)
        )
        await self._maybe_back_off()

    async def _evaluate(self, ready: Prepared) -> None:
        self.current, queued = ready.candidate, False
        try:
            queued = await self.replication.evaluate(ready.candidate)
        finally:
            self.current = None
            self.ctx.ledger.done(ready.candidate.sha256)
            # A queued result's claim is left to expire (:mod:`~autoresearchd.worker.claims`).
            if not queued:
                self.claims.drop(ready.candidate)

    async def prepare(self) -> Prepared | None:
        """Everything a run needs from the memory: the best, a fresh candidate, its claim."""
        for _ in range(CLAIM_ATTEMPTS):
            best = await self.best.read()
            candidate = await self.proposing.propose(best)
            if candidate is None:
                return None
            log.info(
                "candidate_proposed",
                sha=candidate.sha256[:12],
                proposer=candidate.proposer,
                description=candidate.description,
            )
            if await self.claims.claim(candidate):
                return Prepared(candidate, best)
        return None

    def _take_next(self) -> Prepared | None:
        """The speculation after a keep of its parent, else the candidate prepared."""
        ready, speculated = self._take_prepared(), self.speculation.take()
        if speculated is None:
            return ready
        if ready is not None:
            # Rarely left current too (another agent's keep of the speculation's parent, say):
            # the speculation runs, and this one is freed as a stale one is.
            self.claims.forgo(ready.candidate)
        return speculated

    def _take_prepared(self) -> Prepared | None:
        ready, moved = self.claims.take(), self.best.take_moved()
        if ready is not None and moved and not self.best.builds_on_own(ready.candidate):
            # Proposed from a best we have since beaten: make a fresh one from the new best,
            # and let a hypothesis it came from be applied to that best instead. ``cycle``
            # releases it (claim and in-flight entry) before it proposes again.
            self.claims.forgo(ready.candidate)
            return None
        return ready

    async def _alongside_run(self, done: anyio.Event) -> None:
        """While a run trains: release finished claims and prepare the next candidate."""
        try:
            await self.claims.release_dropped()
            if (
                self.claims.prepared is None
                and not self.ctx.draining.is_set()
                and not self.control.winding_down
            ):
                self.claims.prepared = await self.prepare()
        except AutoresearchdError as exc:
            log.warning("prefetch_failed", error=str(exc))
        except Exception:
            # A bug here must cost the next proposal only, never the run beside it.
            log.exception("prefetch_crashed")
        finally:
            done.set()

    async def _release_all(self) -> None:
        await self.running.standby.discard()
        await self.speculation.release()
        await self.claims.release_all()

    def beside(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``task`` beside the cycle, if the worker is serving."""
        if self._background is not None:
            self._background.start_soon(task)

    async def up_next(self) -> Candidate | None:
        """The next candidate once it is prepared, unless this device winds down."""
        if self._prefetched is not None:
            await self._prefetched.wait()
        ready = self.claims.prepared
        if ready is None or self.control.winding_down:
            return None
        return ready.candidate

    async def up_after_keep(self) -> Candidate | None:
        """The speculation once it is held, unless this device winds down."""
        await self.speculation.settled()
        held = self.speculation.held
        if held is None or self.control.winding_down:
            return None
        return held.candidate

    # -- running, judging and queueing ----------------------------------------------

    async def run_judged(
        self, candidate: Candidate, *, alongside: bool = False, stoppable: bool = False
    ) -> tuple[Result | None, Best | None]:
        """Run ``candidate`` (preparing the next one alongside, if asked, and stopping it
        early if ``stoppable`` and hopeless), then judge it against the best as it stands
        now, waiting at most ``BEST_READ_TIMEOUT_S``."""
        if alongside and self._background is not None:
            self._prefetched = anyio.Event()
            self._background.start_soon(self._alongside_run, self._prefetched)
            self.speculation.begin(candidate, after=self._prefetched)
        result = await self.run(candidate, stoppable=stoppable)
        if result is None or result.status is not Status.DISCARD:
            return result, self.best.known  # no score to judge: queue it at once
        best = self.best.known
        with anyio.move_on_after(BEST_READ_TIMEOUT_S):
            best = await self.best.read()
        return result.with_(delta_vs_best=delta_vs_best(result.val_bpb, best)), best

    async def run(self, candidate: Candidate, *, stoppable: bool = False) -> Result | None:
        return await self.running.run(candidate, stoppable=stoppable)

    async def queue(self, result: Result) -> None:
        """Take a result into account at once (what ran, its score, a keep's new best), and
        queue it durably for the publisher beside the next run."""
        self.ctx.ledger.record(result)
        self.ctx.stopping.remember(result)
        if result.status is Status.KEEP:
            # The share of an earlier candidate must not see this keep as its own.
            await self.after_run.settled()
            self.best.kept(result)
            self.sharing.kept(result)
        # Shielded: a result half-handled is a result lost.
        await self.after_run.then(lambda: self._put(result), shielded=True)

    async def _put(self, result: Result) -> None:
        """Write a result to the outbox, then wake the publisher."""
        await anyio.to_thread.run_sync(self.ctx.outbox.put, result)
        self.results_queued += 1
        self.ctx.publisher.notify()
        log.info(
            "result_queued",
            result_id=result.id,
            status=str(result.status),
            val_bpb=result.val_bpb,
            provisional=result.provisional,
        )

    async def _maybe_back_off(self) -> None:
        if delay := self.running.take_backoff():
            self.health.state = "backing_off"
            log.warning(
                "worker_backoff",
                reason="flapping",
                delay_s=delay,
                crashes=self.running.flaps.streak,
            )
            await sleep_unless(delay, self.ctx.draining)

    # -- the control socket and what status shows -------------------------------------

    def command(self, action: str) -> None:
        """``pause``, ``resume`` or ``finish`` (the control socket)."""
        if action == "finish":
            self.control.finish(busy=self.current is not None)
        elif action == "pause":
            self.control.pause()
        else:
            self.control.resume()

    @property
    def state(self) -> str:
        return self.control.state(self.running.started_at is not None, self.health.state)

    def status(self, now: float) -> DeviceStatus:
        """This device's part of ``autoresearchd status --json``."""
        d, running = self.device, self.running
        return DeviceStatus(
            index=d.index,
            uuid=d.uuid,
            name=d.name,
            kind=d.kind,
            tier=d.tier,
            temperature_c=d.temperature_c,
            state=self.state,
            experiment=self._experiment(now),
            last_val_bpb=running.last_val_bpb,
            last_stopped_early=running.last_stopped_early,
            early_stopping=self.ctx.stopping.describe(self.config.experiment.track, d.tier),
            halted=self.control.halted or None,
        )

    def _experiment(self, now: float) -> ExperimentStatus | None:
        candidate, started = self.current, self.running.started_at
        if candidate is None or started is None:
            return None
        budget = self.config.experiment.time_budget_s
        return ExperimentStatus.of(self.running.run_id, candidate, started, budget, now)
