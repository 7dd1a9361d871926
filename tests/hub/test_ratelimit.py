"""The hub's rate limits: the token bucket, and the middleware that limits each route per IP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from autoresearchd.hub.ratelimit import MAX_BUCKETS, RateLimiter
from tests.hub.support import TEST_HUB, in_process_hub

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_says_when_a_token_is_free() -> None:
    clock = Clock()
    limiter = RateLimiter(0.5, 2, clock=clock)
    assert [limiter.retry_after("ip") for _ in range(2)] == [0.0, 0.0]
    assert limiter.retry_after("ip") == pytest.approx(2.0)
    assert limiter.retry_after("other") == 0.0  # one bucket per key
    clock.now += 2.0
    assert limiter.retry_after("ip") == 0.0  # refilled at 0.5 a second
    assert limiter.retry_after("ip") > 0


def test_a_full_table_forgets_only_the_buckets_that_refilled() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    limiter.retry_after("busy")
    for key in range(MAX_BUCKETS - 1):
        limiter.retry_after(str(key))
    clock.now += 0.5  # nothing has refilled yet: nothing is forgotten
    assert limiter.retry_after("busy") == pytest.approx(0.5)
    assert len(limiter._buckets) == MAX_BUCKETS
    clock.now += 10.0
    assert limiter.retry_after("new") == 0.0  # everything had refilled: the table was pruned
    assert list(limiter._buckets) == ["new"]
    assert limiter.retry_after("new") == pytest.approx(1.0)


async def test_only_requests_a_route_serves_take_a_token(tmp_path: Path) -> None:
    config = dataclasses.replace(TEST_HUB, rate_limit_ip_per_s=0.001, rate_limit_ip_burst=2)
    hub = await in_process_hub(tmp_path / "hub.sqlite", config)
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        wrong_method = [(await http.get("/")).status_code for _ in range(3)]
        unknown = [(await http.post("/nowhere")).status_code for _ in range(3)]
        health = [(await http.get("/healthz")).status_code for _ in range(3)]
        whoami = [(await http.get("/auth/whoami")).status_code for _ in range(3)]
        refused = await http.post("/", json={"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert wrong_method == [405] * 3 and unknown == [404] * 3 and health == [200] * 3
    assert whoami == [401, 401, 429]  # per IP, before the key is even looked at
    assert refused.status_code == 429  # the JSON-RPC routes share the IP's bucket
    assert refused.headers["retry-after"] == "1000"
    assert refused.json() == {"error": "rate limited; retry after 1000 s", "retry_after": 1000}
    await hub.store.close()


async def test_the_link_route_counts_against_the_auth_limit(tmp_path: Path) -> None:
    config = dataclasses.replace(TEST_HUB, auth_rate_limit_per_s=0.5, auth_rate_limit_burst=1)
    hub = await in_process_hub(tmp_path / "hub.sqlite", config)
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        first = await http.get("/auth/claim", params={"agent": "x", "code": "y"})
        second = await http.get("/auth/verify", params={"agent": "x", "code": "y"})
        rpc = await http.post("/", json={"jsonrpc": "2.0", "method": "ping", "id": 1})
    assert first.status_code == 404  # an unknown link, answered
    assert second.status_code == 429 and second.headers["retry-after"] == "2"
    assert rpc.status_code == 200  # the auth limit is the /auth routes' alone
    await hub.store.close()
