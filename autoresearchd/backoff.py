"""Backoff shared by every retry in autoresearchd, in the spirit of BOINC.

The delay for the n-th consecutive failure is ``min·2^(n-1)`` capped at ``max``; network
edges multiply it by U(0.5, 1) so a swarm that failed together does not retry together,
and wait at least as long as a server's ``Retry-After`` when it sent one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import RetryCallState

from autoresearchd.errors import TransientMemoryError


def capped_exponential(failures: int, min_s: float, max_s: float) -> float:
    """The delay after the ``failures``-th consecutive failure (1-based), without jitter."""
    return min(max_s, min_s * 2.0 ** max(0, failures - 1))


def jittered_wait(min_s: float, max_s: float) -> Callable[[RetryCallState], float]:
    """A tenacity ``wait``: capped exponential times U(0.5, 1), at least the Retry-After."""

    def wait(state: RetryCallState) -> float:
        delay = capped_exponential(state.attempt_number, min_s, max_s) * random.uniform(0.5, 1.0)
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after if isinstance(exc, TransientMemoryError) else None
        return max(delay, hint) if hint else delay

    return wait
