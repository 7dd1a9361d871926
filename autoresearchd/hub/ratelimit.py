"""The hub's rate limits: token buckets, and the middleware that applies them per client IP.

The buckets live in process memory: a limit per hub process (each of ``hub.workers``,
each replica), not a global guarantee, so they need no shared state. :class:`RateLimit`
wraps one route (Starlette runs a route's middleware once the route and its method
matched), so only requests a handler would serve take a token; a refused one gets 429
with ``Retry-After`` before its body is read. The
limit per API key needs the key's agent, so the handlers apply it once they have it
(:func:`too_many_requests` is their reply).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.datastructures import URL
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger(__name__)

MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key (an API key's hash, or an IP): ``rate`` a second, up to ``burst``."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def retry_after(self, key: str) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until one is free."""
        now = self._clock()
        if len(self._buckets) >= MAX_BUCKETS:
            self._prune(now)
        bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled: they would start full anyway."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.stamp) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]


def too_many_requests(seconds: int) -> Response:
    """The 429 a rate-limited request gets, saying when to retry."""
    return JSONResponse(
        {"error": f"rate limited; retry after {seconds} s", "retry_after": seconds},
        429,
        headers={"Retry-After": str(seconds)},
    )


def client_ip(scope: Scope) -> str:
    """The client's IP as the server saw it; ``unknown`` when the server gave none."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RateLimit:
    """ASGI middleware: a 429 when any of ``limiters`` refuses the client's IP, in order
    (each limiter that allows the request takes its token)."""

    def __init__(self, app: ASGIApp, *limiters: RateLimiter) -> None:
        self.app = app
        self.limiters = limiters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            ip = client_ip(scope)
            for limiter in self.limiters:
                wait = limiter.retry_after(ip)
                if wait > 0:
                    seconds = math.ceil(wait)
                    path = URL(scope=scope).path
                    log.info("rate_limited", ip=ip, path=path, retry_after=seconds)
                    await too_many_requests(seconds)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
