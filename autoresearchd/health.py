"""Device health between runs: foreign processes, heat, lost GPUs, and flapping.

A worker asks :class:`DeviceHealth` whether its device may start the next run. A GPU
used by someone else's compute process (when ``yield_to_foreign_processes`` is on) or
hotter than ``max_temperature_c`` makes the worker wait; a GPU NVML can no longer read
backs off exponentially. :class:`FlapDetector` notices runs that crash within seconds
several times in a row, the way the wandb agent does, and asks for exponential backoff.
Every wait is interruptible by the daemon's drain event.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import structlog

from autoresearchd.backoff import backoff_delay, sleep_unless
from autoresearchd.config import DevicesConfig
from autoresearchd.errors import GpuError
from autoresearchd.gpus import Gpus, foreign_processes
from autoresearchd.models import Device

log = structlog.get_logger(__name__)

#: A crash this soon after start counts towards flapping.
FLAP_WINDOW_S = 10.0
#: Consecutive quick crashes before a device backs off.
FLAP_THRESHOLD = 3


@dataclass
class FlapDetector:
    """Counts consecutive quick crashes of one device."""

    window_s: float = FLAP_WINDOW_S
    threshold: int = FLAP_THRESHOLD
    streak: int = 0

    def record(self, crashed: bool, duration_s: float) -> float:
        """Note one run; returns how long to back off (0 when healthy)."""
        if crashed and duration_s < self.window_s:
            self.streak += 1
        else:
            self.streak = 0
        if self.streak < self.threshold:
            return 0.0
        return backoff_delay(self.streak - self.threshold + 1)


class DeviceHealth:
    """Decides, between runs, whether a device may take the next experiment."""

    def __init__(self, gpus: Gpus, interrupt: anyio.Event, interval_s: float) -> None:
        self.gpus = gpus
        self.interrupt = interrupt
        self.interval_s = interval_s
        self.state = "idle"
        self._gpu_failures = 0

    async def wait_until_ready(self, device: Device, config: DevicesConfig) -> Device:
        """Return a fresh view of ``device`` once it may run; returns early when interrupted."""
        while not self.interrupt.is_set():
            try:
                fresh = await self.gpus.refresh(device)
            except GpuError as exc:
                await self._back_off(exc)
                continue
            self._gpu_failures = 0
            reason = self._blocker(fresh, config)
            if reason is None:
                self.state = "ready"
                return fresh
            await self._wait(reason, fresh)
        return device

    def _blocker(self, device: Device, config: DevicesConfig) -> str | None:
        if config.yield_to_foreign_processes and foreign_processes(device):
            return "foreign_process"
        if device.temperature_c is not None and device.temperature_c > config.max_temperature_c:
            return "too_hot"
        return None

    async def _wait(self, reason: str, device: Device) -> None:
        if self.state != reason:  # say it once per episode, not every poll
            pids = [p.pid for p in foreign_processes(device)]
            log.info(
                "device_waiting",
                reason=reason,
                temperature_c=device.temperature_c,
                foreign_pids=pids,
            )
            self.state = reason
        await sleep_unless(self.interval_s, self.interrupt)

    async def _back_off(self, exc: GpuError) -> None:
        self._gpu_failures += 1
        delay = backoff_delay(self._gpu_failures)
        self.state = "backing_off"
        log.warning(
            "worker_backoff",
            reason="gpu_error",
            error=str(exc),
            delay_s=delay,
            failures=self._gpu_failures,
        )
        await sleep_unless(delay, self.interrupt)
