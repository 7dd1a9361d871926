"""The shared backoff: capped exponential, jittered by U(0.5, 1), never below Retry-After."""

from unittest import mock

from tenacity import RetryCallState

from autoresearchd.backoff import capped_exponential, jittered_wait
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
