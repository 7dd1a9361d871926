"""The supervisor: one task group owning every worker, the publisher and the health task.

Start-up reads the config, prepares the track's data, opens NVML and the collective
memory, and starts one worker per planned device (:mod:`autoresearchd.runtime` builds
those parts in an async context manager, so nothing is missing while the daemon serves).
Signals drive the lifecycle:

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
keeps a readable ``STATUS=`` line, pings ``WATCHDOG=1`` only while :meth:`Runtime.unhealthy`
finds nothing wrong, and brackets a reload with ``RELOADING=1``/``READY=1``. When NVIDIA
device nodes exist but NVML sees no GPU yet (the driver is still loading at boot), start-up
re-probes with backoff rather than settling for CPU workers.
"""

from __future__ import annotations

import fcntl
import glob
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import structlog

from autoresearchd.backoff import backoff_delay
from autoresearchd.config import Config, DevicesConfig, reload_config
from autoresearchd.config_loader import load_config
from autoresearchd.connectivity import Connectivity
from autoresearchd.control import ControlServer, socket_path
from autoresearchd.errors import AutoresearchdError, ConfigError, DataError
from autoresearchd.gpus import Discovery, Gpus
from autoresearchd.notify import Notifier
from autoresearchd.report import status_line
from autoresearchd.runner import prune_runs
from autoresearchd.runtime import STATUS_INTERVAL_S, Lifecycle, Runtime, State, open_runtime
from autoresearchd.statedir import StateDir
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.worker.loop import Worker

log = structlog.get_logger(__name__)

#: How long the final flush may wait for the memory before leaving results on disk.
FLUSH_TIMEOUT_S = 30.0
EXIT_OK = 0
EXIT_FAILED = 1
#: Where NVIDIA's driver creates one character device per GPU.
NVIDIA_DEVICE_NODES = "/dev/nvidia[0-9]*"
REPROBE_MIN_S = 5.0
REPROBE_MAX_S = 300.0


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
        self.lifecycle = Lifecycle()
        #: The workers, once the runtime has planned the devices.
        self.workers: list[Worker] = []
        self.forced = False
        self.results_unsaved = 0
        self._early_drain = ""
        self._status_shown = ""

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[Runtime] = anyio.TASK_STATUS_IGNORED
    ) -> int:
        """Serve until drained; ``task_status`` gets the runtime once the daemon is ready."""
        if self.lifecycle.state is not State.CREATED:
            raise RuntimeError("a Daemon can be served once")
        self.lifecycle.state = State.STARTING
        try:
            config = self.config
            with state_lock(config.daemon.state_dir):
                await self._prepare_data(config)
                runtime = open_runtime(
                    config,
                    self.lifecycle,
                    self.connectivity,
                    nvml=self.nvml,
                    discover=self._discover,
                )
                async with runtime as opened:
                    return await self._supervise(opened, task_status)
        finally:
            self.lifecycle.state = State.STOPPED

    async def _discover(self, gpus: Gpus) -> Discovery:
        return await discover_gpus(
            gpus, self.config.devices, node_glob=self.device_nodes, notifier=self.notifier
        )

    async def _supervise(self, runtime: Runtime, task_status: anyio.abc.TaskStatus[Runtime]) -> int:
        if not runtime.workers:
            reason = runtime.discovery.error or "no GPU selected, cpu_workers = 0"
            log.error("no_devices", reason=reason)
            return EXIT_FAILED
        self.workers = runtime.workers
        self.lifecycle.state = State.RUNNING
        await self._ready(runtime)  # before an early drain, so STOPPING=1 is the last word
        if self._early_drain:
            self.drain(self._early_drain)
        log.info(
            "daemon_started",
            agent=self.config.daemon.agent,
            track=self.config.experiment.track,
            devices=[w.device.uuid for w in runtime.workers],
            memory=self.config.memory.backend,
            pending=runtime.ctx.outbox.depth(),
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._handle_signals, runtime, tg.cancel_scope)
            tg.start_soon(runtime.serve_publisher)
            tg.start_soon(self._health_loop, runtime)
            tg.start_soon(self._notify_loop, runtime)
            tg.start_soon(ControlServer(socket_path(self.config.daemon.state_dir), runtime).serve)
            task_status.started(runtime)
            async with anyio.create_task_group() as workers:
                for worker in runtime.workers:
                    workers.start_soon(worker.serve)
            await self._finish(runtime)
            tg.cancel_scope.cancel()
        return EXIT_FAILED if self.forced or self.results_unsaved else EXIT_OK

    async def _finish(self, runtime: Runtime) -> None:
        """Workers are done: flush what they queued, within reason."""
        outbox = runtime.ctx.outbox
        flushed = await runtime.ctx.publisher.flush(FLUSH_TIMEOUT_S)
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

    async def _handle_signals(self, runtime: Runtime, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.notifier.reloading()
                    runtime.ctx.config = await self.reload()
                    await self._ready(runtime)
                elif self.lifecycle.state is State.RUNNING:
                    self.drain(signal.Signals(signum).name)
                else:
                    log.warning("daemon_forced_stop", signal=signal.Signals(signum).name)
                    self.forced = True
                    scope.cancel()

    def drain(self, reason: str) -> None:
        """Stage one: stop claiming, and stop running experiments after the grace period.

        Asked for during start-up, it takes effect as soon as the workers exist.
        """
        if self.lifecycle.state in (State.CREATED, State.STARTING):
            self._early_drain = reason
            return
        self.lifecycle.state = State.DRAINING
        mode = self.config.daemon.on_shutdown
        log.info(
            "daemon_stopping", reason=reason, mode=mode, grace_s=self.config.daemon.shutdown_grace_s
        )
        self.lifecycle.draining.set()
        self.notifier.stopping(f"stopping: {reason}, running experiments {mode}")
        if mode == "stop":
            self.lifecycle.stop_runs.set()

    async def _grace_timer(self) -> None:
        lifecycle = self.lifecycle
        await lifecycle.draining.wait()
        with anyio.move_on_after(self.config.daemon.shutdown_grace_s):
            await lifecycle.stop_runs.wait()
        if not lifecycle.stop_runs.is_set():
            log.info("grace_expired", action="stopping running experiments")
            lifecycle.stop_runs.set()

    async def reload(self) -> Config:
        """Validate the config file again; the workers apply the config returned (the
        running one when the file is invalid) from their next run.

        Settings read at start-up or bound to claims keep their running values
        (:data:`~autoresearchd.config.RESTART_ONLY`), and the log names those that changed.
        """
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="previous config")
            return self.config
        new, waiting = reload_config(self.config, new)
        if waiting:
            log.warning("config_restart_needed", keys=waiting)
        self.config = new
        log.info("config_reloaded", path=str(self.config_path))
        return new

    # -- housekeeping, systemd and health --------------------------------------------

    async def _health_loop(self, runtime: Runtime) -> None:
        """Prune old run directories and watch the grace period while draining."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._grace_timer)
            while True:
                keep = self.config.experiment.keep_runs
                live = runtime.live_runs()
                await anyio.to_thread.run_sync(prune_runs, self.config.run_dir, keep, live)
                await anyio.sleep(self.config.daemon.health_interval_s)

    async def _ready(self, runtime: Runtime) -> None:
        self._status_shown = status_line(await runtime.snapshot())
        self.notifier.ready(self._status_shown)

    async def _notify_loop(self, runtime: Runtime) -> None:
        """Refresh STATUS= and ping the watchdog, at half of ``WATCHDOG_USEC``."""
        interval = self.notifier.watchdog_s or STATUS_INTERVAL_S
        withheld, lag = "", 0.0
        while True:
            problem = runtime.unhealthy(lag, interval)
            if problem is None:
                self.notifier.watchdog()
            elif problem != withheld:
                log.error("watchdog_withheld", reason=problem)
            withheld = problem or ""
            line = status_line(await runtime.snapshot())
            if line != self._status_shown:
                self.notifier.status(line)
                self._status_shown = line
            before = anyio.current_time()
            await anyio.sleep(interval)
            lag = anyio.current_time() - before - interval


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


def run_daemon(config_path: Path) -> int:
    """Entry point for ``autoresearchd run``: serve until signalled, return the exit code."""
    try:
        return anyio.run(Daemon(config_path).serve)
    except AutoresearchdError as exc:
        log.error("daemon_failed", error=str(exc))
        raise
