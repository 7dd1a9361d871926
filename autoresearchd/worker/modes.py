"""Device control: pause, finish and resume from the control socket, and halting for good.

A paused worker asks for no work at all and holds no claims; pausing stops the run in
progress (it leaves no result). Finishing lets the current candidate and its replicates
end, then pauses; a finish or pause that lands between runs holds the next candidate
instead of starting and stopping it. A halted worker stopped for good: its own baseline
failed for this host's reasons, so every run would fail the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum

import anyio
import structlog

log = structlog.get_logger(__name__)

#: How the health states read in ``autoresearchd status``; any other state is "idle".
HEALTH_STATES = {
    "foreign_process": "waiting_foreign_process",
    "too_hot": "too_hot",
    "backing_off": "backing_off",
}


class Mode(Enum):
    ACTIVE = "active"
    FINISHING = "finishing"
    PAUSED = "paused"
    HALTED = "halted"


class DeviceControl:
    """One device's mode, and the event that stops its run when it is paused."""

    def __init__(self, draining: anyio.Event, stop_runs: anyio.Event) -> None:
        self.mode = Mode.ACTIVE
        #: Why the worker halted, once it has.
        self.halted = ""
        self._draining = draining
        self._stop_runs = stop_runs
        self._resumed = anyio.Event()
        self._run_stop: anyio.Event | None = None

    @property
    def paused(self) -> bool:
        return self.mode is Mode.PAUSED

    @property
    def winding_down(self) -> bool:
        """Paused or finishing: claim nothing more."""
        return self.mode in (Mode.PAUSED, Mode.FINISHING)

    def pause(self) -> None:
        """Stop the run in progress now (it leaves no result) and ask for no more work."""
        if self.mode is not Mode.HALTED:
            self.mode = Mode.PAUSED
        if self._run_stop is not None:
            self._run_stop.set()

    def finish(self, busy: bool) -> None:
        """Let the current candidate (``busy``, with its replicates) finish, then pause."""
        if not busy:
            self.pause()
        elif self.mode is Mode.ACTIVE:
            self.mode = Mode.FINISHING

    def resume(self) -> None:
        if self.mode is not Mode.HALTED:
            self.mode = Mode.ACTIVE
        # Wake whoever waits on this event, and arm a fresh one for the next pause.
        self._resumed.set()
        self._resumed = anyio.Event()

    def halt(self, reason: str) -> None:
        """Stop for good: every run here would fail for ``reason``."""
        self.mode, self.halted = Mode.HALTED, reason

    async def hold_while_paused(self, release_all: Callable[[], Awaitable[None]]) -> None:
        """A finished candidate turns finishing into paused; paused, give up every claim
        (``release_all``) and wait for resume or the drain."""
        if self.mode is Mode.FINISHING:
            self.mode = Mode.PAUSED
        if not self.paused:
            return
        await release_all()  # a paused device holds no claims
        log.info("worker_paused")
        await wait_any(self._resumed, self._draining)
        log.info("worker_resumed", draining=self._draining.is_set())

    @asynccontextmanager
    async def stop_signal(self) -> AsyncIterator[anyio.Event]:
        """An event set when the daemon stops runs or this device is paused."""
        stop = self._run_stop = anyio.Event()
        if self.paused:
            stop.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_relay, self._stop_runs, stop)
            try:
                yield stop
            finally:
                self._run_stop = None
                tg.cancel_scope.cancel()

    def state(self, running: bool, health: str) -> str:
        """halted, running, finishing, stopping, paused, waiting_foreign_process, too_hot,
        backing_off or idle, for a device whose run is ``running`` and health ``health``."""
        if self.mode is Mode.HALTED:
            return "halted"
        if running:
            if self.paused:
                return "stopping"
            return "finishing" if self.mode is Mode.FINISHING else "running"
        if self.paused:
            return "paused"
        return HEALTH_STATES.get(health, "idle")


async def _relay(source: anyio.Event, target: anyio.Event) -> None:
    await source.wait()
    target.set()


async def wait_any(*events: anyio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        for event in events:
            tg.start_soon(_wait_then_cancel, event, tg.cancel_scope)


async def _wait_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
