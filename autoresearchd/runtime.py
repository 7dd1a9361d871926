"""What a serving daemon holds: its memory, outbox, publisher, GPUs and one worker per device.

:func:`open_runtime` builds it in an async context manager (the sandbox probe, the outbox,
the collective memory, NVML and the device plan) and closes it on the way out, so within
the block nothing is missing. The :class:`Runtime` answers the control socket (status,
pause, resume, finish) and says whether systemd should be told the daemon is alive.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import anyio
import structlog

from autoresearchd import __version__
from autoresearchd.config import Config
from autoresearchd.connectivity import Connectivity, TrackedMemory
from autoresearchd.control import match_devices
from autoresearchd.gpus import Discovery, Gpus, plan_devices, select_gpus
from autoresearchd.memory import open_memory
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.sandbox_probe import open_sandbox
from autoresearchd.worker.context import WorkerContext
from autoresearchd.worker.loop import Worker
from autoresearchd.worker.status import DaemonStatus

log = structlog.get_logger(__name__)

#: How often STATUS= is refreshed when no watchdog asks for a faster pace.
STATUS_INTERVAL_S = 10.0
#: The actions the control socket may ask of a device.
ACTIONS = ("pause", "resume", "finish")


class State(Enum):
    CREATED = "created"
    #: Serving, but the workers do not exist yet: a drain waits for them.
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class Lifecycle:
    """The daemon's state, and the events that drain it: set to stop claiming, then to
    stop the runs in progress."""

    state: State = State.CREATED
    started_at: float = field(default_factory=time.time)
    draining: anyio.Event = field(default_factory=anyio.Event)
    stop_runs: anyio.Event = field(default_factory=anyio.Event)


class Runtime:
    """The parts of a serving daemon; the control socket's target."""

    def __init__(
        self,
        ctx: WorkerContext,
        workers: list[Worker],
        lifecycle: Lifecycle,
        connectivity: Connectivity,
        discovery: Discovery | None = None,
    ) -> None:
        self.ctx = ctx
        self.workers = workers
        self.lifecycle = lifecycle
        self.connectivity = connectivity
        self.discovery = discovery or Discovery(())
        self.publisher_alive = False

    async def serve_publisher(self) -> None:
        self.publisher_alive = True
        try:
            await self.ctx.publisher.serve()
        finally:
            self.publisher_alive = False

    async def snapshot(self) -> dict[str, Any]:
        """The status as the control socket sends it (see the control module)."""
        return (await self.status()).to_json()

    async def status(self) -> DaemonStatus:
        """The state ``autoresearchd status`` shows."""
        now, config, outbox = time.time(), self.ctx.config, self.ctx.outbox
        depth = await anyio.to_thread.run_sync(outbox.depth)
        return DaemonStatus(
            pid=os.getpid(),
            version=__version__,
            agent=config.daemon.agent,
            track=config.experiment.track,
            state=self.lifecycle.state.value,
            started_at=self.lifecycle.started_at,
            best_bpb=self.best_bpb(),
            outbox_depth=depth,
            outbox_held=outbox.held_count(),
            outbox_error=outbox.last_error,
            memory=self.connectivity.to_json(),
            devices=tuple(worker.status(now) for worker in self.workers),
        )

    def best_bpb(self) -> float | None:
        known = [w.best.known.val_bpb for w in self.workers if w.best.known is not None]
        if self.ctx.publisher.best_bpb is not None:
            known.append(self.ctx.publisher.best_bpb)
        # A hub seeds its best unscored (infinite): that is no figure to show.
        return min((v for v in known if math.isfinite(v)), default=None)

    def control(self, action: str, device: str | None) -> list[str]:
        """Pause, resume or finish one device, or all of them (for the control socket)."""
        if action not in ACTIONS:
            raise KeyError(action)
        chosen = [self.workers[i] for i in match_devices([w.device for w in self.workers], device)]
        for worker in chosen:
            worker.command(action)
        uuids = [w.device.uuid for w in chosen]
        log.info("devices_controlled", action=action, devices=uuids)
        return uuids

    def unhealthy(self, lag_s: float = 0.0, interval_s: float = STATUS_INTERVAL_S) -> str | None:
        """Why systemd should not be told we are alive, or None when all is well.

        Healthy means: serving (running or draining), the publisher task alive, the event
        loop answering within one interval, and at least one worker not wedged (a run
        outliving every limit the runner enforces, or a device would be idle forever).
        """
        state = self.lifecycle.state
        if state not in (State.RUNNING, State.DRAINING):
            return f"daemon is {state.value}"
        if not self.publisher_alive:
            return "publisher task is not running"
        if lag_s > interval_s:
            return f"event loop stalled for {lag_s:.1f} s"
        if self.workers and all(w.running.is_wedged() for w in self.workers):
            return "every worker is wedged in a run past its limits"
        return None

    def live_runs(self) -> set[str]:
        """The run directories in use: each worker's run and its standby's."""
        return {
            r for w in self.workers for r in (w.running.run_id, *w.running.standby.run_ids) if r
        }


@asynccontextmanager
async def open_runtime(
    config: Config,
    lifecycle: Lifecycle,
    connectivity: Connectivity,
    *,
    nvml: object | None,
    discover: Callable[[Gpus], Awaitable[Discovery]],
) -> AsyncIterator[Runtime]:
    """The daemon's parts, open for the block; no workers when no device was planned."""
    sandbox = await anyio.to_thread.run_sync(open_sandbox, config)
    outbox = Outbox(config.outbox_dir)
    await anyio.to_thread.run_sync(outbox.open)
    memory = TrackedMemory(open_memory(config), connectivity)
    async with Gpus(nvml) as gpus, memory:
        discovery = await discover(gpus)
        devices = plan_devices(select_gpus(discovery.gpus, config.devices), config.devices)
        ctx = WorkerContext(
            config=config,
            memory=memory,
            outbox=outbox,
            publisher=Publisher(outbox, memory),
            gpus=gpus,
            draining=lifecycle.draining,
            stop_runs=lifecycle.stop_runs,
            software=software_versions(discovery),
            sandbox=sandbox,
        )
        workers = [Worker(device, ctx) for device in devices]
        yield Runtime(ctx, workers, lifecycle, connectivity, discovery)


def software_versions(discovery: Discovery) -> dict[str, str]:
    """Versions recorded with every result, read without importing torch."""
    versions = {"python": platform.python_version(), "autoresearchd": __version__}
    try:
        versions["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    if discovery.driver:
        versions["driver"] = discovery.driver
    return versions
