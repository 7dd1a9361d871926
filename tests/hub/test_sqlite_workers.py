"""A SQLite hub with ``hub.workers = 2``: two ``hub serve`` processes on one file and one port.

No connection is reused, so the kernel spreads the requests over both processes
(``SO_REUSEPORT``). The writes contend for the same keys and for the file's one write lock:
creates of the same keys (one winner each), compare-and-set on one counter (no lost update)
and keys of each writer's own (every acknowledged one is there afterwards). None may fail:
no 5xx, no "database is locked" in the log. A change of an agent (a revoke by ``hub
revoke``, a verification through one process) holds at once in both. The conformance suite
and the replica races run over such a hub too (tests/hub/test_replicas.py).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from autoresearchd.hub.storage.protocol import REASON_EXISTS, REASON_VERSION
from autoresearchd.testing.processes import cpu_seconds, worker_pids
from tests.hub.support import HubProcess, cli, hub_process, tool_payload

WORKERS = 2
AGENTS = 8
CONTESTED = 24  # keys every agent tries to create
OWN = 12  # keys of its own each agent creates
COUNTER_TASKS = 6  # tasks moving one counter by compare-and-set
INCREMENTS = 8  # each
#: CPU seconds each process must spend on the load (about 0.25 each), so that both served
#: it (an idle hub spends a few milliseconds in that time).
SERVED_CPU_S = 0.05
#: Requests, each on a new connection, that reach both processes but for a chance of 2^-19.
SPREAD = 20

_ids = itertools.count()


@dataclass
class Workers:
    hub: HubProcess
    pids: list[int]  # every process of the hub, the first one first
    folder: Path  # its hub.toml and hub.log


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    folder = tmp_path_factory.mktemp("workers")
    with hub_process(folder, workers=WORKERS) as hub:
        others = worker_pids(hub.proc.pid, httpx.URL(hub.url).port or 0, WORKERS - 1)
        yield Workers(hub, [hub.proc.pid, *others], folder)
    log = (folder / "hub.log").read_text()
    assert "locked" not in log and "Traceback" not in log, log[-2000:]


@dataclass
class Contest:
    """Writes that contend across the processes, and what the hub acknowledged of them."""

    url: str
    org: str
    keys: list[str]  # the agents' API keys
    client: httpx.AsyncClient
    winners: dict[str, list[str]] = field(default_factory=dict)  # contested key: creators
    own: list[str] = field(default_factory=list)
    increments: list[int] = field(default_factory=list)  # the counter values set

    @property
    def counter(self) -> str:
        return f"@{self.org}/counter"

    async def call(self, key: str, tool: str, arguments: dict[str, Any]) -> Any:
        """A tool call's payload; it must get HTTP 200, not a 503 for a locked database."""
        body = {
            "jsonrpc": "2.0",
            "id": next(_ids),
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        headers = {"Authorization": f"Bearer {key}"}
        reply = await self.client.post(self.url, json=body, headers=headers)
        assert reply.status_code == 200, f"{tool}: HTTP {reply.status_code}: {reply.text}"
        return tool_payload(reply.json())

    async def create(self, key: str, name: str, value: str) -> bool:
        """Whether this create won; a loser must have lost to an existing key."""
        item = {"key_name": name, "value": value}
        reply = await self.call(key, "create_memory", {"items": [item]})
        if "code" in reply:
            assert reply["data"]["reason"] == REASON_EXISTS, reply
            return False
        assert reply["results"][0]["status"] == "success", reply
        return True

    async def creator(self, index: int) -> None:
        key = self.keys[index]
        for name in self.winners:  # every agent in the same order: they meet on each key
            if await self.create(key, name, json.dumps({"by": index})):
                self.winners[name].append(str(index))
        for i in range(OWN):
            name = f"@{self.org}/own/{index}/{i}"
            assert await self.create(key, name, name)
            self.own.append(name)

    async def incrementer(self) -> None:
        key = self.keys[0]
        for _ in range(INCREMENTS):
            while True:
                got = await self.call(key, "get_memory", {"key_names": [self.counter]})
                entry = got["results"][0]
                value = str(int(entry["value"]) + 1)
                args = {"key_name": self.counter, "value": value, "if_match": entry["version"]}
                reply = await self.call(key, "update_memory", args)
                if "code" not in reply:
                    self.increments.append(int(value))
                    break
                assert reply["data"]["reason"] == REASON_VERSION, reply

    async def run(self) -> None:
        self.winners = {f"@{self.org}/contest/{j}": [] for j in range(CONTESTED)}
        assert await self.create(self.keys[0], self.counter, "0")
        async with anyio.create_task_group() as tasks:
            for index in range(len(self.keys)):
                tasks.start_soon(self.creator, index)
            for _ in range(COUNTER_TASKS):
                tasks.start_soon(self.incrementer)

    async def stored(self) -> dict[str, Any]:
        """Every key written, as the hub reads it back now."""
        names = [*self.winners, *self.own, self.counter]
        got = await self.call(self.keys[1], "get_memory", {"key_names": names})
        return {entry["key_name"]: entry for entry in got["results"]}


async def _contend(url: str, org: str, keys: list[str]) -> tuple[Contest, dict[str, Any]]:
    # No connection is reused, so the kernel spreads the calls over both processes.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        contest = Contest(url, org, keys, client)
        await contest.run()
        return contest, await contest.stored()


def test_contended_writes_through_both_workers_all_land_once(workers: Workers) -> None:
    hub = workers.hub
    org = hub.new_org()
    keys = [hub.register(f"contender{next(_ids)}") for _ in range(AGENTS)]
    before = [cpu_seconds([pid]) for pid in workers.pids]
    contest, stored = anyio.run(_contend, hub.url, org, keys)
    spent = [cpu_seconds([pid]) - cpu for pid, cpu in zip(workers.pids, before, strict=True)]

    assert all(s >= SERVED_CPU_S for s in spent), f"CPU per process: {spent}"
    assert all(len(won) == 1 for won in contest.winners.values()), contest.winners
    for name, (winner,) in contest.winners.items():
        assert json.loads(stored[name]["value"]) == {"by": int(winner)}, stored[name]
    assert len(contest.own) == AGENTS * OWN
    assert all(stored[name]["value"] == name for name in contest.own)
    # Each acknowledged compare-and-set moved the counter by one: none was lost or doubled.
    assert sorted(contest.increments) == list(range(1, COUNTER_TASKS * INCREMENTS + 1))
    counter = stored[contest.counter]
    assert (counter["value"], counter["version"]) == (
        str(len(contest.increments)),
        1 + len(contest.increments),
    )


def whoami(url: str, key: str) -> httpx.Response:
    # A client of its own: a new connection, which either process may take.
    with httpx.Client(timeout=10) as client:
        return client.get(f"{url}auth/whoami", headers={"Authorization": f"Bearer {key}"})


def test_a_revoke_holds_at_once_in_every_worker(workers: Workers) -> None:
    hub = workers.hub
    name = f"revoked{next(_ids)}"
    key = hub.register(name)
    assert all(whoami(hub.url, key).status_code == 200 for _ in range(SPREAD))  # now cached
    done = cli("hub", "revoke", "--config", str(workers.folder / "hub.toml"), name)
    assert done.returncode == 0, done.stderr
    assert [whoami(hub.url, key).status_code for _ in range(SPREAD)] == [401] * SPREAD


def test_a_verification_through_one_worker_holds_at_once_in_the_other(
    workers: Workers,
) -> None:
    hub = workers.hub
    reply = httpx.post(f"{hub.url}auth/agent-register", json={"name": f"v{next(_ids)}"})
    key, link = reply.json()["api_key"], reply.json()["claim_url"]
    assert not any(whoami(hub.url, key).json()["verified"] for _ in range(SPREAD))
    httpx.get(link, timeout=10).raise_for_status()
    assert all(whoami(hub.url, key).json()["verified"] for _ in range(SPREAD))
