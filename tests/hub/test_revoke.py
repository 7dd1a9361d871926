"""Revoking a key (``hub revoke``), and the key cache every hub process keeps.

A key the cache holds must stop working as soon as it is revoked: at once on a SQLite hub
(the cache reads a counter the revoke bumps in its own transaction) and, on PostgreSQL,
on every replica once the revoke's notification reaches it (milliseconds; the test allows
two seconds and prints how long it took).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from autoresearchd.hub.credentials import hash_key
from autoresearchd.hub.storage.auto import open_store
from autoresearchd.hub.storage.rows import Agent
from autoresearchd.testing.pgcluster import Cluster
from autoresearchd.testing.processes import worker_pids
from tests.hub.support import cli, free_port, hub_process, serve_hub, write_hub_config

NOTIFIED_WITHIN_S = 2.0


def whoami(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}auth/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=10)


def rpc(url: str, key: str) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "list_keys", "arguments": {"prefix": "@test/"}},
    }
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_a_revoked_key_is_refused_at_once_by_a_serving_sqlite_hub(tmp_path: Path) -> None:
    with hub_process(tmp_path) as hub:
        key = hub.register("alice")
        for _ in range(3):  # the key is in the hub's cache now
            assert whoami(hub.url, key).status_code == 200
            assert rpc(hub.url, key).status_code == 200
        done = cli("hub", "revoke", "--config", str(tmp_path / "hub.toml"), "alice")
        assert done.returncode == 0, done.stderr
        assert "revoked the API key of alice" in done.stdout
        assert whoami(hub.url, key).status_code == 401
        refused = rpc(hub.url, key)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == -32001
        other = hub.register("bob")  # other agents are untouched
        assert whoami(hub.url, other).status_code == 200
        again = cli("hub", "revoke", "--config", str(tmp_path / "hub.toml"), "alice")
        assert again.returncode == 1 and "no agent alice with a live key" in again.stderr


def test_verification_reaches_a_cached_key_at_once(tmp_path: Path) -> None:
    with hub_process(tmp_path) as hub:
        reply = httpx.post(f"{hub.url}auth/agent-register", json={"name": "carol"}, timeout=10)
        key, link = reply.json()["api_key"], reply.json()["claim_url"]
        assert whoami(hub.url, key).json()["verified"] is False
        httpx.get(link, timeout=10).raise_for_status()
        assert whoami(hub.url, key).json()["verified"] is True


def test_revoking_in_one_store_is_seen_by_another_on_the_same_sqlite_file(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        database = tmp_path / "hub.sqlite"
        serving, other = await open_store(database), await open_store(database)
        try:
            key_hash = hash_key("ard_key")
            assert await serving.register(Agent("dave", verified=True), key_hash, "c", 0.0)
            assert await serving.agent_for(key_hash) == Agent("dave", verified=True)
            assert await other.revoke("dave", 1.0)
            assert await serving.agent_for(key_hash) is None
            assert not await other.revoke("dave", 2.0)
        finally:
            await serving.close()
            await other.close()

    anyio.run(main)


def test_a_revoked_key_is_refused_by_every_postgresql_replica(
    postgres: Cluster, tmp_path: Path
) -> None:
    database = postgres.create_schema("hub_revoke")
    configs = []
    for index in range(2):
        (tmp_path / str(index)).mkdir()
        configs.append(write_hub_config(tmp_path / str(index), free_port(), database=database))
    assert cli("hub", "init", "--config", str(configs[0])).returncode == 0
    urls = [
        f"http://127.0.0.1:{c.read_text().split('listen_port = ')[1].split()[0]}/" for c in configs
    ]
    with (
        serve_hub(configs[0], tmp_path / "0.log"),
        serve_hub(configs[1], tmp_path / "1.log"),
    ):
        reply = httpx.post(f"{urls[0]}auth/agent-register", json={"name": "erin"}, timeout=10)
        key = reply.json()["api_key"]
        httpx.get(reply.json()["claim_url"], timeout=10).raise_for_status()
        time.sleep(0.5)  # let the replicas listen before the keys are cached
        for url in urls:
            for _ in range(3):
                assert whoami(url, key).json()["verified"] is True
        done = cli("hub", "revoke", "--config", str(configs[1]), "erin")
        assert done.returncode == 0, done.stderr
        revoked_at = time.monotonic()
        for url in urls:
            while whoami(url, key).status_code != 401:
                waited = time.monotonic() - revoked_at
                assert waited < NOTIFIED_WITHIN_S, f"{url} still takes the revoked key"
                time.sleep(0.01)
            print(f"{url}: refused {time.monotonic() - revoked_at:.3f} s after the revoke")
            assert rpc(url, key).status_code == 401


@pytest.mark.anyio
async def test_without_its_listener_a_postgresql_store_caches_no_key(postgres_url: str) -> None:
    serving, other = await open_store(postgres_url), await open_store(postgres_url)
    try:
        key_hash = hash_key("ard_key")
        assert await serving.register(Agent("frank"), key_hash, "c", 0.0)
        assert await serving.agent_for(key_hash) == Agent("frank")
        assert await other.revoke("frank", 1.0)
        assert await serving.agent_for(key_hash) is None
    finally:
        await serving.close()
        await other.close()


def test_workers_share_one_port_and_stop_with_the_first(postgres: Cluster, tmp_path: Path) -> None:
    """``hub.workers = 2``: two processes answer on one port, revokes reach both, and
    stopping the hub stops its other worker."""
    database = postgres.create_schema("hub_workers")
    port = free_port()
    config = write_hub_config(tmp_path, port, database=database, workers=2)
    assert cli("hub", "init", "--config", str(config)).returncode == 0
    url = f"http://127.0.0.1:{port}/"
    with serve_hub(config, tmp_path / "hub.log") as proc:
        children = worker_pids(proc.pid, port, 1)
        worker = Path(f"/proc/{children[0]}/cmdline").read_bytes().split(b"\0")
        assert b"--worker" in worker
        reply = httpx.post(f"{url}auth/agent-register", json={"name": "gina"}, timeout=10)
        key = reply.json()["api_key"]
        time.sleep(0.5)  # both workers listen for changes of agents
        # New connections each time, so the kernel spreads them over both workers.
        assert all(whoami(url, key).status_code == 200 for _ in range(20))
        assert cli("hub", "revoke", "--config", str(config), "gina").returncode == 0
        deadline = time.monotonic() + NOTIFIED_WITHIN_S
        while not all(whoami(url, key).status_code == 401 for _ in range(20)):
            assert time.monotonic() < deadline, "a worker still takes the revoked key"
            time.sleep(0.05)
    assert (
        not Path(f"/proc/{children[0]}").exists()
        or b"zombie" in Path(f"/proc/{children[0]}/status").read_bytes().lower()
    )
