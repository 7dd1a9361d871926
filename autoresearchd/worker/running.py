"""One run on a worker's device: its spec, the run itself, and what it leaves as a result.

A run is built from the config as it stands (a reload applies from the next run), pinned to
the device, cached for ``torch.compile`` and wrapped in the sandbox where one is used. While
it trains, the next candidate's process may start as a standby, so the next run skips its
start-up; on a GPU, so may the speculation's, for a keep. A candidate's first run may stop
early when its learning curve is hopeless; replicates and re-measures always run to the end.
The run's outcome also feeds the flap detector and, for our own baseline failing for this
host's reasons, halts the worker rather than publish a crash per run.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import structlog

from autoresearchd import compile_cache
from autoresearchd.early_stopping import LearningCurve
from autoresearchd.errors import GpuError
from autoresearchd.health import FlapDetector
from autoresearchd.judging import plausible
from autoresearchd.models import Candidate, Device, Result
from autoresearchd.records import build_result, new_run_id
from autoresearchd.run_spec import RunSpec
from autoresearchd.runner import RunReport, run_experiment
from autoresearchd.sandbox import environment_failure
from autoresearchd.standby import Key, Standby, opts_in, room_for_spare
from autoresearchd.worker.best import BestView
from autoresearchd.worker.context import Host, origin
from autoresearchd.worker.modes import DeviceControl

log = structlog.get_logger(__name__)

#: A run still going this long after its hard limit (budget, grace, kill grace) is wedged.
WEDGED_MARGIN_S = 60.0


class Runs(Host, Protocol):
    """The worker a run happens on, as this module uses it."""

    @property
    def best(self) -> BestView: ...
    @property
    def control(self) -> DeviceControl: ...
    def beside(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``task`` beside the cycle, if the worker is serving."""

    async def up_next(self) -> Candidate | None:
        """The next candidate once it is prepared, if a standby of it may start now."""

    async def up_after_keep(self) -> Candidate | None:
        """The speculation once it is held, if a standby of it may start now."""


class Running:
    """A worker's runs: the one in progress, its standby, and what the last one showed."""

    #: On a GPU, a second standby for the speculation. Off only for a baseline measured
    #: beside it (``benchmarks/training_share.py``, which builds its workers in a daemon).
    spare_standby = True

    def __init__(self, host: Runs) -> None:
        self._host = host
        #: The next candidate's process, started while the current run trains.
        self.standby = Standby()
        self.flaps = FlapDetector()
        self.run_id: str | None = None
        self.started_at: float | None = None
        self.last_val_bpb: float | None = None
        self.last_stopped_early: float | None = None
        self._clock = 0.0
        self._flap_delay = 0.0
        #: The device as read when the first standby beside the run started.
        self._memory_before: Device | None = None

    async def run(self, candidate: Candidate, *, stoppable: bool = False) -> Result | None:
        """Run ``candidate`` once; None when the run leaves no result (stopped, halted)."""
        host = self._host
        held = self.standby.take(self.key(candidate))
        seed = held.seed if held else host.ctx.new_seed()
        run_id = held.spec.run_id if held else new_run_id(host.config.daemon.agent)
        spec = held.spec if held else self.spec(run_id, candidate, seed)
        curve = None
        if stoppable:  # only a candidate's first run: never a replicate or a re-measure
            experiment, tier = host.config.experiment, host.device.tier
            curve = host.ctx.stopping.curve_for(experiment, tier, candidate, host.best.current())
            if curve is not None:
                host.beside(self._refresh_stopping)
        # Every run's curve is read: on a CPU, its successor's standby waits for its end.
        curve = curve or LearningCurve(spec.time_budget_s)
        spec = dataclasses.replace(spec, curve=curve)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            self.started_at, self.run_id = time.time(), run_id
            self._clock = time.monotonic()
            beside = self._standby_alongside(candidate, curve)
            async with host.control.stop_signal() as stop, beside:
                report = await run_experiment(
                    spec, stop=stop, standby=held.started if held else None
                )
        finally:
            self.started_at = self.run_id = None
            structlog.contextvars.unbind_contextvars("run_id")
        self.standby.learn(report)
        return self.record(candidate, report, seed)

    async def _refresh_stopping(self) -> None:
        """Recalibrate early stopping on the swarm's stored curves, beside the run."""
        host = self._host
        try:
            await host.ctx.stopping.refresh(
                host.ctx.memory,
                host.config.experiment,
                host.device.tier,
                limit=host.config.proposer.max_history,
            )
        except Exception:
            # A bug here must cost early stopping only, never the run beside it.
            log.exception("early_stopping_refresh_crashed")

    def key(self, candidate: Candidate) -> Key:
        """What a standby of ``candidate`` must match to run here now."""
        host = self._host
        sandboxed = host.ctx.sandbox is not None and host.config.experiment.sandbox != "off"
        return Key(candidate.sha256, host.device.uuid, host.config.experiment, sandboxed)

    @asynccontextmanager
    async def _standby_alongside(
        self, running: Candidate, curve: LearningCurve
    ) -> AsyncIterator[None]:
        """While a run goes on, start the next candidate's process in time for its turn."""
        first, self._memory_before = anyio.Event(), None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._start_standby, running, curve, first)
            if self.spare_standby and self._host.device.is_gpu:
                tg.start_soon(self._start_spare, running, first)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _start_standby(
        self, running: Candidate, curve: LearningCurve, done: anyio.Event
    ) -> None:
        """The next candidate's standby, in time for its turn; ``done`` once it is started
        (or will not be)."""
        try:
            host = self._host
            budget = host.config.experiment.time_budget_s
            await self.standby.wait_until_due(host.device, budget, curve)
            candidate = await host.up_next()
            if candidate is None or self.standby.held:
                return
            self._memory_before = await self._read_device()
            await self._start_one(running, candidate)
        finally:
            done.set()

    async def _start_spare(self, running: Candidate, first: anyio.Event) -> None:
        """On a GPU, the speculation's standby: once the first standby is ready, and only
        while the device has memory to spare (:func:`~autoresearchd.standby.room_for_spare`)."""
        try:
            candidate = await self._host.up_after_keep()
            await first.wait()
            if candidate is None or self.standby.holds(candidate.sha256):
                return  # none, or started beside an earlier run (a replicate's, say)
            if not await self.standby.wait_ready():
                return
            before, now = self._memory_before, await self._read_device()
            if before is None or now is None or not room_for_spare(before, now):
                log.info("spare_standby_skipped", reason="memory", sha=candidate.sha256[:12])
                return
            await self._start_one(running, candidate)
        except Exception:
            # A bug here must cost a keep its head start only, never the run beside it.
            log.exception("spare_standby_crashed")

    async def _read_device(self) -> Device | None:
        """The device as NVML reads it now; None when it cannot be read."""
        try:
            return await self._host.ctx.gpus.refresh(self._host.device)
        except GpuError:
            return None

    async def _start_one(self, running: Candidate, candidate: Candidate) -> None:
        host = self._host
        if candidate.sha256 == running.sha256 or not opts_in(candidate.source):
            return
        if host.ctx.draining.is_set() or self.standby.holds(candidate.sha256):
            return
        run_id, seed = new_run_id(host.config.daemon.agent), host.ctx.new_seed()
        try:
            spec = self.spec(run_id, candidate, seed)
            await self.standby.start(self.key(candidate), spec, seed)
        except Exception:
            # A bug here must cost the next run its head start only, never the run beside it.
            log.exception("standby_crashed")

    def spec(self, run_id: str, candidate: Candidate, seed: int) -> RunSpec:
        host = self._host
        config, device = host.config, host.device
        spec = RunSpec.from_config(
            config.experiment,
            run_root=config.run_dir,
            run_id=run_id,
            candidate=candidate,
            device=device,
            seed=seed,
        )
        cache = compile_cache.for_run(config, device, candidate)
        if cache is not None:
            env = {**spec.extra_env, **compile_cache.cache_env(cache)}
            spec = dataclasses.replace(spec, extra_env=env)
        sandbox = host.ctx.sandbox
        if sandbox is None or config.experiment.sandbox == "off":
            return spec
        slot = zlib.crc32(device.uuid.encode())
        writable = (cache,) if cache is not None else ()
        return dataclasses.replace(spec, wrap=sandbox.wrapper(spec.run_dir, slot, writable))

    def record(self, candidate: Candidate, report: RunReport, seed: int) -> Result | None:
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
        self.last_stopped_early = report.stopped_early
        if report.outcome == "stopped" or self._halts_on(candidate, report):
            return None
        # A score no honest run can reach (negative, below the track's floor) is invalid.
        result = plausible(build_result(origin(self._host), candidate, report, seed))
        self.last_val_bpb = result.val_bpb if result.val_bpb is not None else self.last_val_bpb
        return result

    def _halts_on(self, candidate: Candidate, report: RunReport) -> bool:
        """Our own baseline failing for this host's reasons (a path the sandbox cannot
        reach, a missing interpreter) halts the worker rather than publish a crash per run."""
        if report.outcome != "crash" or not environment_failure(report.error):
            return False
        ledger = self._host.ctx.ledger
        if candidate.parent_sha256 is not None and not ledger.baseline_failed:
            return False
        ledger.fail_baseline(report.error)
        self._host.control.halt(report.error)
        self._flap_delay = 0.0
        log.error(
            "worker_halted", reason="baseline_failed", error=report.error, log=str(report.log_path)
        )
        return True

    def take_backoff(self) -> float:
        """The pause the flap detector asked for after the last run, once."""
        delay, self._flap_delay = self._flap_delay, 0.0
        return delay

    def is_wedged(self) -> bool:
        """True when a run has outlived every limit the runner enforces.

        Measured on the monotonic clock: a clock step at boot must not make every worker
        look wedged to the watchdog.
        """
        if self.started_at is None:
            return False
        exp = self._host.config.experiment
        limit = exp.time_budget_s + exp.grace_s + exp.kill_grace_s + WEDGED_MARGIN_S
        return time.monotonic() - self._clock > limit
