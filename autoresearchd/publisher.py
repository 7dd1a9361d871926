"""The publisher: drains the outbox into the collective memory, retrying with backoff.

It runs as its own task, so workers never wait on the network: they drop a result in
the outbox and call :meth:`Publisher.notify`. Only transient failures are retried
(``TransientMemoryError``: transport errors, 5xx, 429), with BOINC-style jittered,
capped exponential backoff that honours a server's ``Retry-After``. Every retry is
logged; a permanent refusal parks the result in ``outbox/failed`` instead of losing it.
Alongside, it keeps trying to write results the disk refused (held in memory by the
outbox) every ``SPILL_S``, so they are safe on disk again soon after space returns, and it
runs the outbox's fsyncs as soon as a worker queues a result, even while a publish is
retrying: the worker's next run starts meanwhile instead of waiting for the disk.
"""

from __future__ import annotations

import anyio
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from autoresearchd.backoff import jittered_wait
from autoresearchd.errors import MemoryBackendError, TransientMemoryError
from autoresearchd.memory.protocol import CollectiveMemory, PublishOutcome
from autoresearchd.models import Result
from autoresearchd.outbox import Outbox

log = structlog.get_logger(__name__)

DEFAULT_MIN_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 300.0
#: How often the publisher looks at the outbox even without a notification.
POLL_S = 30.0
#: How often results held in memory (the disk refused them) are offered to the disk again.
SPILL_S = 5.0


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "publish_retry", attempt=state.attempt_number, delay_s=round(delay, 2), error=str(exc)
    )


class Publisher:
    """Publishes queued results in completion order, each exactly once."""

    def __init__(
        self,
        outbox: Outbox,
        memory: CollectiveMemory,
        *,
        min_backoff_s: float = DEFAULT_MIN_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        self.outbox = outbox
        self.memory = memory
        self._wait = jittered_wait(min_backoff_s, max_backoff_s)
        self._wake = anyio.Event()
        self._sync_wake = anyio.Event()
        # One drain at a time: the final flush must not race the serving loop's drain.
        self._draining = anyio.Lock()
        self.best_bpb: float | None = None

    def notify(self) -> None:
        """A worker queued a result: make it durable now, and drain soon."""
        self._wake.set()
        self._sync_wake.set()

    async def serve(self) -> None:
        """Drain forever; the caller cancels this task to stop it."""
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._spill_forever)
            tasks.start_soon(self._sync_forever)
            while True:
                await self.drain()
                with anyio.move_on_after(POLL_S):
                    await self._wake.wait()
                self._wake = anyio.Event()

    async def _spill_forever(self) -> None:
        # Apart from draining: a publish may be retrying for days while the disk frees up.
        while True:
            if self.outbox.held_count():
                await anyio.to_thread.run_sync(self.outbox.spill)
            await anyio.sleep(SPILL_S)

    async def _sync_forever(self) -> None:
        while True:
            await self._sync_wake.wait()
            self._sync_wake = anyio.Event()
            await anyio.to_thread.run_sync(self.outbox.sync)

    async def flush(self, timeout_s: float) -> bool:
        """Drain within ``timeout_s``; True when nothing is left, on disk or in memory."""
        with anyio.move_on_after(timeout_s):
            await self.drain()
        await anyio.to_thread.run_sync(self.outbox.spill)
        await anyio.to_thread.run_sync(self.outbox.sync)
        depth = await anyio.to_thread.run_sync(self.outbox.depth)
        return depth == 0 and not self.outbox.held_count()

    async def drain(self) -> int:
        """Publish everything pending; returns how many results were sent."""
        async with self._draining:
            pending = await anyio.to_thread.run_sync(self.outbox.pending)
            for result in pending:
                await self._publish(result)
        return len(pending)

    async def _publish(self, result: Result) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientMemoryError),
            wait=self._wait,
            stop=stop_never,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            outcome: PublishOutcome = await retrying(self.memory.publish, result)
        except MemoryBackendError as exc:
            log.error("publish_failed", result_id=result.id, error=str(exc))
            await anyio.to_thread.run_sync(self.outbox.fail, result.id, str(exc))
            return
        await anyio.to_thread.run_sync(self.outbox.remove, result.id)
        log.info(
            "result_published",
            result_id=result.id,
            status=str(result.status),
            val_bpb=result.val_bpb,
            replay=not outcome.created,
        )
        if outcome.best_improved:
            self.best_bpb = result.best_bpb
            log.info(
                "best_improved",
                result_id=result.id,
                val_bpb=result.best_bpb,
                scopes=list(outcome.best_improved),
                description=result.description,
            )
