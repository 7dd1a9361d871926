"""Backoff shared by every retry and wait in autoresearchd, in the spirit of BOINC.

The delay for the n-th consecutive failure is ``min·2^(n-1)`` capped at ``max``; network
edges multiply it by U(0.5, 1) so a swarm that failed together does not retry together,
and wait at least as long as a server's ``Retry-After`` when it sent one. Local waits (a
device backing off, a worker pausing after an error) use :func:`backoff_delay` without
jitter and sleep through :func:`sleep_unless`, so the daemon's drain event cuts them short.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
from tenacity import RetryCallState

from autoresearchd.errors import TransientMemoryError

#: The bounds of a local backoff: a device NVML cannot read, a flapping device, a re-probe.
BACKOFF_MIN_S = 30.0
BACKOFF_MAX_S = 3600.0


def capped_exponential(failures: int, min_s: float, max_s: float) -> float:
    """The delay after the ``failures``-th consecutive failure (1-based), without jitter."""
    return min(max_s, min_s * 2.0 ** max(0, failures - 1))


def backoff_delay(
    failures: int, min_s: float = BACKOFF_MIN_S, max_s: float = BACKOFF_MAX_S
) -> float:
    """Exponential backoff for the ``failures``-th consecutive failure (1-based)."""
    return capped_exponential(failures, min_s, max_s)


async def sleep_unless(seconds: float, interrupt: anyio.Event) -> None:
    """Sleep up to ``seconds``, waking early when ``interrupt`` is set."""
    with anyio.move_on_after(seconds):
        await interrupt.wait()


def jittered_wait(min_s: float, max_s: float) -> Callable[[RetryCallState], float]:
    """A tenacity ``wait``: capped exponential times U(0.5, 1), at least the Retry-After."""

    def wait(state: RetryCallState) -> float:
        delay = capped_exponential(state.attempt_number, min_s, max_s) * random.uniform(0.5, 1.0)
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after if isinstance(exc, TransientMemoryError) else None
        return max(delay, hint) if hint else delay

    return wait
