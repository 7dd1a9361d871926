"""The supervisor: one task group owning every worker, the publisher and the health task.

Start-up reads the config, prepares the track's data, opens NVML and the collective
memory, and starts one :class:`Worker` per planned device. Signals drive the lifecycle:

- SIGTERM/SIGINT, first time: stop claiming, let running experiments finish within
  ``daemon.shutdown_grace_s`` (or stop them at once when ``on_shutdown = "stop"``),
  flush the outbox, release claims, exit 0.
- The same signal again: cancel everything now; the runner still kills each child's
  process group on the way out, and results already queued stay in the on-disk outbox.
- SIGHUP: re-read the config, validate it, and hand it to workers for their next run;
  an invalid file is logged and the running config is kept.
"""

from __future__ import annotations

import importlib.metadata
import platform
import signal
import sys
from enum import Enum
from pathlib import Path

import anyio
import structlog

from autoresearchd import __version__
from autoresearchd.config import Config, load_config
from autoresearchd.errors import AutoresearchdError, ConfigError, DataError
from autoresearchd.gpus import Discovery, Gpus, plan_devices, select_gpus
from autoresearchd.harness.prepare import prepare_track
from autoresearchd.memory import open_memory
from autoresearchd.models import Device
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.runner import prune_runs
from autoresearchd.sandbox import open_sandbox
from autoresearchd.worker import Worker, WorkerContext

log = structlog.get_logger(__name__)

#: How long the final flush may wait for the memory before leaving results on disk.
FLUSH_TIMEOUT_S = 30.0
EXIT_OK = 0
EXIT_FAILED = 1


class State(Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Daemon:
    """Runs workers until told to stop; ``serve`` returns the process exit code."""

    def __init__(self, config_path: Path, *, nvml: object | None = None) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        self.nvml = nvml
        self.state = State.CREATED
        self.workers: list[Worker] = []
        self.forced = False
        self.ctx: WorkerContext | None = None
        self._early_drain = ""

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
        await self._prepare_data(config)
        sandbox = await anyio.to_thread.run_sync(open_sandbox, config)
        outbox = Outbox(config.outbox_dir)
        await anyio.to_thread.run_sync(outbox.open)
        async with Gpus(self.nvml) as gpus, open_memory(config) as memory:
            discovery = await gpus.discover()
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
            tg.start_soon(self.ctx.publisher.serve)
            tg.start_soon(self._health_loop)
            async with anyio.create_task_group() as workers:
                for worker in self.workers:
                    workers.start_soon(worker.serve)
            await self._finish()
            tg.cancel_scope.cancel()
        return EXIT_FAILED if self.forced else EXIT_OK

    async def _finish(self) -> None:
        """Workers are done: flush what they queued, within reason."""
        assert self.ctx is not None
        flushed = await self.ctx.publisher.flush(FLUSH_TIMEOUT_S)
        log.info("daemon_stopped", outbox_flushed=flushed, pending=self.ctx.outbox.depth())

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
                    await self.reload()
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
        """Validate the config file again and apply it from each worker's next run."""
        assert self.ctx is not None
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="previous config")
            return
        fixed = [
            name
            for name in ("devices", "memory")
            if getattr(new, name) != getattr(self.config, name)
        ]
        if new.daemon.state_dir != self.config.daemon.state_dir:
            fixed.append("daemon.state_dir")
        if fixed:
            log.warning("config_restart_needed", sections=fixed)
        self.config = self.ctx.config = new
        log.info("config_reloaded", path=str(self.config_path))

    # -- housekeeping ----------------------------------------------------------------

    async def _health_loop(self) -> None:
        """Prune old run directories and watch the grace period while draining."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._grace_timer)
            while True:
                # Each worker's run in progress is among the newest directories, so a
                # margin of one per worker keeps live runs out of reach of pruning.
                keep = self.config.experiment.keep_runs + len(self.workers)
                removed = await anyio.to_thread.run_sync(prune_runs, self.config.run_dir, keep)
                if removed:
                    log.debug("runs_pruned", removed=removed)
                await anyio.sleep(self.config.daemon.health_interval_s)


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
