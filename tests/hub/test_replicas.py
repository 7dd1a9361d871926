"""Several ``hub serve`` processes on one database, requests spread across them.

Each test runs twice: over two replicas on one PostgreSQL database, each on its own port,
and over a SQLite hub's two workers (``hub.workers = 2``), which share its file and one
port. The client conformance suite runs with every request sent to the next replica in
turn (for the workers, the kernel picks one per connection); the race tests give each agent
its own replica (its own connections), so the only thing the writers share is the database.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.models import sha256_text
from autoresearchd.testing.processes import worker_pids
from tests.hub.support import (
    TRACK,
    HubProcess,
    cli,
    free_port,
    hub_process,
    new_org,
    serve_hub,
    write_hub_config,
)
from tests.memory.conformance import MemoryConformance, MemoryFactory, make_result

REPLICAS = 2


class RoundRobin(httpx.AsyncBaseTransport):
    """Send each request to the next replica's port in turn, as a load balancer would."""

    def __init__(self, urls: list[str]) -> None:
        self._ports = itertools.cycle([httpx.URL(url).port for url in urls])
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(port=next(self._ports))
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture(scope="module", params=["postgresql", "sqlite_workers"])
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[HubProcess]]:
    """``REPLICAS`` hub processes sharing one database: PostgreSQL replicas, each on its own
    port, or a SQLite hub's workers, both on its port (each entry names the same hub)."""
    if request.param == "sqlite_workers":
        with hub_process(tmp_path_factory.mktemp("workers"), workers=REPLICAS) as hub:
            worker_pids(hub.proc.pid, httpx.URL(hub.url).port or 0, REPLICAS - 1)
            yield [hub] * REPLICAS
        return
    database = request.getfixturevalue("postgres").create_schema("hub_replicas")
    folder = tmp_path_factory.mktemp("replicas")
    configs = []
    for index in range(REPLICAS):
        (folder / str(index)).mkdir()
        configs.append(write_hub_config(folder / str(index), free_port(), database=database))
    init = cli("hub", "init", "--config", str(configs[0]))
    assert init.returncode == 0, init.stderr
    with (
        serve_hub(configs[0], folder / "0.log") as first,
        serve_hub(configs[1], folder / "1.log") as second,
    ):
        yield [
            HubProcess(_url(config), database, proc)
            for config, proc in zip(configs, (first, second), strict=True)
        ]


def _url(config: Path) -> str:
    port = next(
        line.split("=")[1].strip()
        for line in config.read_text().splitlines()
        if line.startswith("listen_port")
    )
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def alice(replicas: list[HubProcess]) -> str:
    """A verified agent: registered on one replica, verified through the other."""
    reply = httpx.post(f"{replicas[0].url}auth/agent-register", json={"name": "alice"})
    link = reply.json()["claim_url"].replace(replicas[0].url, replicas[1].url)
    httpx.get(link, timeout=10).raise_for_status()
    whoami = httpx.get(
        f"{replicas[1].url}auth/whoami",
        headers={"Authorization": f"Bearer {reply.json()['api_key']}"},
    )
    assert whoami.json() == {"agent": "alice", "verified": True, "admin": False}
    return str(reply.json()["api_key"])


class TestEnsueAcrossReplicasConformance(MemoryConformance):
    """Every conformance test, each request to the next replica; a fresh org per test."""

    @pytest.fixture
    def make_memory(self, replicas: list[HubProcess], alice: str) -> MemoryFactory:
        org = replicas[0].new_org()
        urls = [hub.url for hub in replicas]
        return lambda clock: EnsueMemory(
            urls[0], org, alice, primary_track=TRACK, clock=clock, transport=RoundRobin(urls)
        )


pytestmark = pytest.mark.anyio


_racers = itertools.count()


def register(replicas: list[HubProcess], count: int) -> list[tuple[str, str]]:
    """``count`` new verified agents as (name, key), agent i registered on replica i mod n."""
    names = [f"racer{next(_racers)}" for _ in range(count)]
    return [(name, replicas[i % len(replicas)].register(name)) for i, name in enumerate(names)]


async def test_concurrent_claims_on_different_replicas_have_one_winner(
    replicas: list[HubProcess],
) -> None:
    agents = register(replicas, 16)
    org, wins = await new_org(replicas[0].database), []

    async def claim(index: int) -> None:
        url = replicas[index % len(replicas)].url
        name, key = agents[index]
        async with EnsueMemory(url, org, key, primary_track=TRACK) as memory:
            for sha in ("sha-a", "sha-b"):
                if await memory.claim(TRACK, sha, name, 60.0):
                    wins.append(sha)

    async with anyio.create_task_group() as tg:
        for index in range(len(agents)):
            tg.start_soon(claim, index)
    assert sorted(wins) == ["sha-a", "sha-b"]


async def test_concurrent_best_moves_on_different_replicas_end_at_the_true_minimum(
    replicas: list[HubProcess],
) -> None:
    agents = register(replicas, 24)
    org, rng = await new_org(replicas[0].database), random.Random(5)
    results = [make_result(agent_id=name, val_bpb=rng.uniform(1.9, 2.1)) for name, _ in agents]

    async def publish(index: int) -> None:
        url = replicas[index % len(replicas)].url
        async with EnsueMemory(url, org, agents[index][1], primary_track=TRACK) as memory:
            await memory.publish(results[index])

    async with anyio.create_task_group() as tg:
        for index in range(len(agents)):
            tg.start_soon(publish, index)
    winner = min(results, key=lambda r: r.val_bpb or 3.0)
    async with EnsueMemory(replicas[1].url, org, agents[0][1], primary_track=TRACK) as memory:
        best = await memory.get_best(TRACK)
        meta, source = await memory.keys.get([f"@{org}/best/metadata", f"@{org}/best/train_py"])
        history = await memory.best_history(TRACK)
    assert best is not None and (best.val_bpb, best.result_id) == (winner.val_bpb, winner.id)
    assert meta is not None and source is not None and source.text == winner.train_py
    assert json.loads(meta.text or "")["train_py_sha256"] == sha256_text(source.text or "")
    moves = [change.val_bpb for change in reversed(history)]
    assert moves == sorted(moves, reverse=True) and len(set(moves)) == len(moves)
