"""The supervisor: one task group owning every worker, the publisher and the health task.

Start-up reads the config, prepares the track's data, opens NVML and the collective
memory, and starts one :class:`Worker` per planned device. Signals drive the lifecycle:

- SIGTERM/SIGINT, first time: stop claiming, let running experiments finish within
  ``daemon.shutdown_grace_s`` (or stop them at once when ``on_shutdown = "stop"``),
  flush the outbox, release claims, exit 0.
- The same signal again: cancel everything now; the runner still kills each child's
  process group on the way out, and results already queued stay in the on-disk outbox.
- SIGHUP: re-read the config, validate it, and hand it to workers for their next run;
  an invalid file is logged and the running config is kept. Settings read at start-up
  (devices, memory, state dir) or bound to claims and prepared data (agent, track, data
  dir) wait for a restart, and the log names them.

Under systemd (``Type=notify``) the daemon says ``READY=1`` once devices are known,
keeps a readable ``STATUS=`` line, pings ``WATCHDOG=1`` only while :meth:`Daemon.unhealthy`
finds nothing wrong, and brackets a reload with ``RELOADING=1``/``READY=1``. When NVIDIA
device nodes exist but NVML sees no GPU yet (the driver is still loading at boot), start-up
re-probes with backoff rather than settling for CPU workers.
"""

from __future__ import annotations

import fcntl
import glob
import importlib.metadata
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import anyio
import structlog

from autoresearchd import __version__
from autoresearchd.config import Config, DevicesConfig, load_config, reload_config
from autoresearchd.control import (
    Connectivity,
    ControlServer,
    TrackedMemory,
    match_devices,
    socket_path,
    status_line,
)
from autoresearchd.errors import AutoresearchdError, ConfigError, DataError
from autoresearchd.gpus import Discovery, Gpus, plan_devices, select_gpus
from autoresearchd.health import backoff_delay
from autoresearchd.memory import open_memory
from autoresearchd.models import Device
from autoresearchd.notify import Notifier
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.runner import prune_runs
from autoresearchd.sandbox import open_sandbox
from autoresearchd.statedir import StateDir
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.worker.loop import Worker, WorkerContext

log = structlog.get_logger(__name__)

#: How long the final flush may wait for the memory before leaving results on disk.
FLUSH_TIMEOUT_S = 30.0
EXIT_OK = 0
EXIT_FAILED = 1
#: Where NVIDIA's driver creates one character device per GPU.
NVIDIA_DEVICE_NODES = "/dev/nvidia[0-9]*"
REPROBE_MIN_S = 5.0
REPROBE_MAX_S = 300.0
#: How often STATUS= is refreshed when no watchdog asks for a faster pace.
STATUS_INTERVAL_S = 10.0


class State(Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Daemon:
    """Runs workers until told to stop; ``serve`` returns the process exit code."""

    def __init__(
        self,
        config_path: Path,
        *,
        nvml: object | None = None,
        notifier: Notifier | None = None,
        device_nodes: str = NVIDIA_DEVICE_NODES,
    ) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.nvml = nvml
        self.notifier = notifier or Notifier()
        self.device_nodes = device_nodes
        self.connectivity = Connectivity(self.config.memory.backend, self.config.memory.url)
        self.started_at = time.time()
        self.publisher_alive = False
        self._status_shown = ""
        self.state = State.CREATED
        self.workers: list[Worker] = []
        self.forced = False
        self.ctx: WorkerContext | None = None
        self._early_drain = ""
        self.results_unsaved = 0

    async def serve(self) -> int:
        if self.state is not State.CREATED:
            raise RuntimeError("a Daemon can be served once")
        self.state = State.RUNNING
        try:
            return await self._serve()
        finally:
            self.state = State.STOPPED

    async def _serve(self) -> int:
        config = self.config
        with state_lock(config.daemon.state_dir):
            return await self._serve_locked(config)

    async def _serve_locked(self, config: Config) -> int:
        await self._prepare_data(config)
        sandbox = await anyio.to_thread.run_sync(open_sandbox, config)
        outbox = Outbox(config.outbox_dir)
        await anyio.to_thread.run_sync(outbox.open)
        memory = TrackedMemory(open_memory(config), self.connectivity)
        async with Gpus(self.nvml) as gpus, memory:
            discovery = await discover_gpus(
                gpus, config.devices, node_glob=self.device_nodes, notifier=self.notifier
            )
            devices = plan_devices(select_gpus(discovery.gpus, config.devices), config.devices)
            if not devices:
                log.error(
                    "no_devices", reason=discovery.error or "no GPU selected, cpu_workers = 0"
                )
                return EXIT_FAILED
            publisher = Publisher(outbox, memory)
            self.ctx = WorkerContext(
                config=config,
                memory=memory,
                outbox=outbox,
                publisher=publisher,
                gpus=gpus,
                software=software_versions(discovery),
                sandbox=sandbox,
            )
            self.workers = [Worker(device, self.ctx) for device in devices]
            return await self._supervise(devices)

    async def _supervise(self, devices: list[Device]) -> int:
        assert self.ctx is not None
        await self._ready()  # before an early drain, so STOPPING=1 is the last word
        if self._early_drain:
            self.drain(self._early_drain)
        log.info(
            "daemon_started",
            agent=self.config.daemon.agent,
            track=self.config.experiment.track,
            devices=[d.uuid for d in devices],
            memory=self.config.memory.backend,
            pending=self.ctx.outbox.depth(),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._handle_signals, tg.cancel_scope)
            tg.start_soon(self._serve_publisher)
            tg.start_soon(self._health_loop)
            tg.start_soon(self._notify_loop)
            tg.start_soon(ControlServer(socket_path(self.config.daemon.state_dir), self).serve)
            async with anyio.create_task_group() as workers:
                for worker in self.workers:
                    workers.start_soon(worker.serve)
            await self._finish()
            tg.cancel_scope.cancel()
        return EXIT_FAILED if self.forced or self.results_unsaved else EXIT_OK

    async def _finish(self) -> None:
        """Workers are done: flush what they queued, within reason."""
        assert self.ctx is not None
        outbox = self.ctx.outbox
        flushed = await self.ctx.publisher.flush(FLUSH_TIMEOUT_S)
        unsaved = outbox.held()
        for result in unsaved:
            # The disk still refuses it and the memory has not taken it: the log is the one
            # place left, so the whole record goes there, to be recovered from the journal.
            log.error(
                "result_unsaved",
                result_id=result.id,
                error=outbox.last_error,
                record=result.to_record(),
            )
        self.results_unsaved = len(unsaved)
        log.info(
            "daemon_stopped", outbox_flushed=flushed, pending=outbox.depth(), unsaved=len(unsaved)
        )

    async def _prepare_data(self, config: Config) -> None:
        """Prepare the track in a child process, so the daemon's memory never holds the data."""
        exp = config.experiment
        command = [
            sys.executable,
            "-m",
            "autoresearchd",
            "prepare",
            "--track",
            exp.track,
            "--data-dir",
            str(exp.data_dir),
        ]
        done = await anyio.run_process(command, check=False)
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
            raise DataError(lines[-1].removeprefix("autoresearchd: "), track=exp.track)
        # Already prepared, so this only reads the metadata back.
        prepared = await anyio.to_thread.run_sync(prepare_track, exp.track, exp.data_dir)
        log.info(
            "data_ready",
            track=exp.track,
            path=str(prepared.path),
            entropy_floor_bpb=prepared.entropy_floor_bpb,
        )

    # -- signals ---------------------------------------------------------------------

    async def _handle_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.notifier.reloading()
                    await self.reload()
                    await self._ready()
                elif self.state is State.RUNNING:
                    self.drain(signal.Signals(signum).name)
                else:
                    log.warning("daemon_forced_stop", signal=signal.Signals(signum).name)
                    self.forced = True
                    scope.cancel()

    def drain(self, reason: str) -> None:
        """Stage one: stop claiming, and stop running experiments after the grace period.

        Asked for during start-up, it takes effect as soon as the workers exist.
        """
        if self.ctx is None:
            self._early_drain = reason
            return
        self.state = State.DRAINING
        mode = self.config.daemon.on_shutdown
        log.info(
            "daemon_stopping", reason=reason, mode=mode, grace_s=self.config.daemon.shutdown_grace_s
        )
        self.ctx.draining.set()
        self.notifier.stopping(f"stopping: {reason}, running experiments {mode}")
        if mode == "stop":
            self.ctx.stop_runs.set()

    async def _grace_timer(self) -> None:
        assert self.ctx is not None
        await self.ctx.draining.wait()
        with anyio.move_on_after(self.config.daemon.shutdown_grace_s):
            await self.ctx.stop_runs.wait()
        if not self.ctx.stop_runs.is_set():
            log.info("grace_expired", action="stopping running experiments")
            self.ctx.stop_runs.set()

    async def reload(self) -> None:
        """Validate the config file again and apply it from each worker's next run.

        Settings read at start-up or bound to claims keep their running values
        (:data:`~autoresearchd.config.RESTART_ONLY`), and the log names those that changed.
        """
        assert self.ctx is not None
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="previous config")
            return
        new, waiting = reload_config(self.config, new)
        if waiting:
            log.warning("config_restart_needed", keys=waiting)
        self.config = self.ctx.config = new
        log.info("config_reloaded", path=str(self.config_path))

    # -- housekeeping ----------------------------------------------------------------

    async def _health_loop(self) -> None:
        """Prune old run directories and watch the grace period while draining."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._grace_timer)
            while True:
                live = {r for w in self.workers for r in (w.run_id, w.standby.run_id) if r}
                keep = self.config.experiment.keep_runs
                await anyio.to_thread.run_sync(prune_runs, self.config.run_dir, keep, live)
                await anyio.sleep(self.config.daemon.health_interval_s)

    # -- systemd, the control socket and health -------------------------------------

    async def _serve_publisher(self) -> None:
        assert self.ctx is not None
        self.publisher_alive = True
        try:
            await self.ctx.publisher.serve()
        finally:
            self.publisher_alive = False

    async def _ready(self) -> None:
        self._status_shown = status_line(await self.snapshot())
        self.notifier.ready(self._status_shown)

    async def _notify_loop(self) -> None:
        """Refresh STATUS= and ping the watchdog, at half of ``WATCHDOG_USEC``."""
        interval = self.notifier.watchdog_s or STATUS_INTERVAL_S
        withheld, lag = "", 0.0
        while True:
            problem = self.unhealthy(lag, interval)
            if problem is None:
                self.notifier.watchdog()
            elif problem != withheld:
                log.error("watchdog_withheld", reason=problem)
            withheld = problem or ""
            line = status_line(await self.snapshot())
            if line != self._status_shown:
                self.notifier.status(line)
                self._status_shown = line
            before = anyio.current_time()
            await anyio.sleep(interval)
            lag = anyio.current_time() - before - interval

    def unhealthy(self, lag_s: float = 0.0, interval_s: float = STATUS_INTERVAL_S) -> str | None:
        """Why systemd should not be told we are alive, or None when all is well.

        Healthy means: serving (running or draining), the publisher task alive, the event
        loop answering within one interval, and at least one worker not wedged (a run
        outliving every limit the runner enforces, or a device would be idle forever).
        """
        if self.state not in (State.RUNNING, State.DRAINING):
            return f"daemon is {self.state.value}"
        if not self.publisher_alive:
            return "publisher task is not running"
        if lag_s > interval_s:
            return f"event loop stalled for {lag_s:.1f} s"
        now = time.time()
        if self.workers and all(w.is_wedged(now) for w in self.workers):
            return "every worker is wedged in a run past its limits"
        return None

    async def snapshot(self) -> dict[str, Any]:
        """The state ``autoresearchd status`` shows (see the control module)."""
        assert self.ctx is not None
        now = time.time()
        depth = await anyio.to_thread.run_sync(self.ctx.outbox.depth)
        return {
            "pid": os.getpid(),
            "version": __version__,
            "agent": self.config.daemon.agent,
            "track": self.config.experiment.track,
            "state": self.state.value,
            "started_at": self.started_at,
            "best_bpb": self.best_bpb(),
            "outbox_depth": depth,
            # Results the disk refused, kept only in memory until it takes them again.
            "outbox_held": self.ctx.outbox.held_count(),
            "outbox_error": self.ctx.outbox.last_error,
            "memory": self.connectivity.to_json(),
            "devices": [worker.snapshot(now) for worker in self.workers],
        }

    def best_bpb(self) -> float | None:
        assert self.ctx is not None
        known = [w.known_best.val_bpb for w in self.workers if w.known_best is not None]
        if self.ctx.publisher.best_bpb is not None:
            known.append(self.ctx.publisher.best_bpb)
        # A hub seeds its best unscored (infinite): that is no figure to show.
        return min((v for v in known if math.isfinite(v)), default=None)

    def control(self, action: str, device: str | None) -> list[str]:
        """Pause, resume or finish one device, or all of them (for the control socket)."""
        chosen = [self.workers[i] for i in match_devices([w.device for w in self.workers], device)]
        for worker in chosen:
            {"pause": worker.pause, "resume": worker.resume, "finish": worker.finish}[action]()
        uuids = [w.device.uuid for w in chosen]
        log.info("devices_controlled", action=action, devices=uuids)
        return uuids


async def discover_gpus(
    gpus: Gpus,
    config: DevicesConfig,
    *,
    node_glob: str = NVIDIA_DEVICE_NODES,
    min_delay_s: float = REPROBE_MIN_S,
    notifier: Notifier | None = None,
) -> Discovery:
    """Discover GPUs, re-probing with backoff while device nodes promise some.

    At boot the NVIDIA driver may finish loading after we start; settling for CPU
    workers then would waste the GPUs until the next restart (BOINC learned this).
    """
    discovery = await gpus.discover()
    attempt = 0
    while not discovery.gpus and config.gpus == "auto" and (nodes := glob.glob(node_glob)):
        attempt += 1
        delay = backoff_delay(attempt, min_delay_s, REPROBE_MAX_S)
        reason = discovery.error or "NVML lists no GPU"
        log.warning(
            "gpus_not_ready", reason=reason, nodes=len(nodes), attempt=attempt, retry_in_s=delay
        )
        if notifier is not None:  # stretch systemd's start timeout over the wait
            notifier.send(
                EXTEND_TIMEOUT_USEC=str(int((delay + REPROBE_MIN_S) * 1_000_000)),
                STATUS=f"waiting for NVIDIA GPUs ({reason}); retry in {delay:g} s",
            )
        await anyio.sleep(delay)
        discovery = await gpus.reprobe()
    if attempt and discovery.gpus:
        log.info("gpus_ready", gpus=len(discovery.gpus), attempts=attempt)
    return discovery


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``<state_dir>/daemon.lock``: two daemons on one state directory would take each
    other's control socket, outbox and run directories."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(StateDir(state_dir).lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "another autoresearchd is already running with this state directory",
                path=str(state_dir),
            ) from None
        yield


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


def run_daemon(config_path: Path) -> int:
    """Entry point for ``autoresearchd run``: serve until signalled, return the exit code."""
    try:
        return anyio.run(Daemon(config_path).serve)
    except AutoresearchdError as exc:
        log.error("daemon_failed", error=str(exc))
        raise
