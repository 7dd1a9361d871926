"""What follows a run, done beside the next one: the durable queueing of results, sharing.

A finished run's verdict stays on the critical path, since it chooses the next run (a
replicate, a re-measure of the incumbent, a fresh candidate); the steps that only carry a
verdict out do not. Each such step starts once the one before it has finished, so results
reach the outbox in the order they were judged; a step that crashes is logged and costs
itself only. The worker waits for the last step before it stops, so every result is queued
before the daemon drains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import structlog

log = structlog.get_logger(__name__)


class AfterRun:
    """One worker's steps after its runs, run in order beside its cycle."""

    def __init__(self) -> None:
        self._group: anyio.abc.TaskGroup | None = None
        self._last: anyio.Event | None = None

    def attach(self, group: anyio.abc.TaskGroup | None) -> None:
        """Run later steps in ``group`` (the worker's, while it serves); None runs them inline."""
        self._group = group

    async def then(self, step: Callable[[], Awaitable[None]], *, shielded: bool = False) -> None:
        """Run ``step`` after every step before it: beside the cycle when the worker serves,
        else at once. A ``shielded`` step (a result on its way to the outbox) is never cut
        short by a cancellation."""
        if self._group is None:
            await self.settled()
            with anyio.CancelScope(shield=shielded):
                await step()
            return
        previous, done = self._last, anyio.Event()
        self._last = done
        self._group.start_soon(self._after, previous, done, step, shielded)

    async def _after(
        self,
        previous: anyio.Event | None,
        done: anyio.Event,
        step: Callable[[], Awaitable[None]],
        shielded: bool,
    ) -> None:
        try:
            with anyio.CancelScope(shield=shielded):
                if previous is not None:
                    await previous.wait()
                await step()
        except Exception:
            # A bug here must cost this step only, never the run beside it nor the next step.
            log.exception("after_run_crashed")
        finally:
            done.set()

    async def settled(self) -> None:
        """Wait until every step started so far has finished."""
        if self._last is not None:
            await self._last.wait()
