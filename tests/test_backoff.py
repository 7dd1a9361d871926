"""The shared backoff: capped exponential, jittered by U(0.5, 1), never below Retry-After;
local waits capped the same way and cut short by an interrupt."""

import time
from unittest import mock

import anyio
import pytest
from tenacity import RetryCallState

from autoresearchd.backoff import backoff_delay, capped_exponential, jittered_wait, sleep_unless
from autoresearchd.errors import TransientMemoryError


def failed_attempt(number: int, exc: BaseException) -> RetryCallState:
    state = RetryCallState(retry_object=mock.Mock(), fn=None, args=(), kwargs={})
    state.attempt_number = number
    state.set_exception((type(exc), exc, None))
    return state


def test_doubles_from_the_minimum_and_stops_at_the_cap() -> None:
    assert [capped_exponential(n, 1.0, 10.0) for n in range(1, 6)] == [1, 2, 4, 8, 10]


def test_jitter_stays_between_half_and_all_of_the_delay() -> None:
    wait = jittered_wait(1.0, 300.0)
    delays = [wait(failed_attempt(4, OSError("down"))) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert max(delays) - min(delays) > 1.0, "retries of a swarm must spread out"


def test_a_retry_after_hint_is_a_floor() -> None:
    wait = jittered_wait(1.0, 2.0)
    assert wait(failed_attempt(1, TransientMemoryError("busy", retry_after=30.0))) == 30.0


def test_a_local_backoff_is_capped() -> None:
    assert backoff_delay(100, min_s=1, max_s=60) == 60


@pytest.mark.anyio
async def test_an_interrupt_cuts_a_wait_short_and_a_quiet_wait_runs_its_length() -> None:
    interrupt = anyio.Event()
    started = time.monotonic()
    await sleep_unless(0.05, interrupt)
    assert time.monotonic() - started >= 0.05
    interrupt.set()
    started = time.monotonic()
    await sleep_unless(60.0, interrupt)
    assert time.monotonic() - started < 5.0
