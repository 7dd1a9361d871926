"""Helpers that build real hubs for tests: in-process apps and ``hub serve`` processes."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from autoresearchd.config import HubConfig
from autoresearchd.hub.app import HubApp, build_app
from autoresearchd.hub.credentials import hash_key, new_api_key
from autoresearchd.hub.mail import Mailer
from autoresearchd.hub.storage.auto import open_store
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.rows import Agent
from autoresearchd.memory.ensue_client import EnsueMemory
from tests.daemon_process import cli as cli  # re-exported: the hub tests drive the CLI too

ORG = "test"
TRACK = "synthetic"
URL = "http://hub.test/"
#: Tests drive the hub much harder than one daemon would, so the limits are tested on their
#: own; conformance publishes single keep results, so no replicates are needed.
UNLIMITED: dict[str, Any] = {
    "rate_limit_per_s": 1e6,
    "rate_limit_burst": 10**6,
    "rate_limit_ip_per_s": 1e6,
    "rate_limit_ip_burst": 10**6,
    "auth_rate_limit_per_s": 1e6,
    "auth_rate_limit_burst": 10**6,
}
TEST_HUB = HubConfig(**UNLIMITED, require_email=False, replicates=0)

_orgs = itertools.count()


def tool_payload(message: dict[str, Any]) -> Any:
    """A tools/call reply as tests read it: the tool's payload, or the error object.

    A tool error (an MCP ``isError`` result) reads like a JSON-RPC error, ``{code,
    message, data}``, with whatever else the tool reported beside them.
    """
    if "error" in message:
        return message["error"]
    result = message["result"]
    payload = json.loads(result["content"][0]["text"])
    if result.get("isError") is not True:
        return payload
    extra = {k: v for k, v in payload.items() if k not in ("code", "error", "data")}
    return {"code": payload["code"], "message": payload["error"], **extra} | (
        {"data": payload["data"]} if "data" in payload else {}
    )


@dataclass
class InProcessHub:
    """A hub app over a fresh database, reached through ``httpx.ASGITransport``."""

    store: HubStore
    app: HubApp

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)

    async def agent(self, name: str, *, admin: bool = False, verified: bool = True) -> str:
        """A new agent's API key, registered straight in the store."""
        key = new_api_key()
        agent = Agent(name, is_admin=admin, verified=verified)
        assert await self.store.register(agent, hash_key(key), hash_key("code"), 0.0)
        return key

    def memory(self, key: str, **options: Any) -> EnsueMemory:
        return EnsueMemory(
            URL, ORG, key, primary_track=TRACK, transport=self.transport(), **options
        )


async def in_process_hub(
    database: Path | str, config: HubConfig = TEST_HUB, mailer: Mailer | None = None
) -> InProcessHub:
    """A hub over ``database``: a SQLite file or a migrated ``postgresql://`` URL."""
    store = await open_store(database)
    await store.create_org(ORG, 0.0)
    return InProcessHub(store, build_app(store, config, mailer=mailer))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_hub_config(folder: Path, port: int, **hub: Any) -> Path:
    settings = {
        "listen_port": port,
        "org": ORG,
        **UNLIMITED,
        "require_email": False,
        "replicates": 0,
    }
    settings.update(hub)
    lines = ["[daemon]", f'state_dir = "{folder / "state"}"', "[hub]"]
    lines += [
        f'{k} = "{v}"'
        if isinstance(v, str)
        else f"{k} = {str(v).lower()}"
        if isinstance(v, bool)
        else f"{k} = {v!r}"
        for k, v in settings.items()
    ]
    path = folder / "hub.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class HubProcess:
    """A real ``autoresearchd hub serve`` process on loopback."""

    url: str
    database: Path | str
    proc: subprocess.Popen[bytes]

    def register(self, name: str, *, verify: bool = True) -> str:
        """A new agent's API key; verified by opening the link the reply carries."""
        reply = httpx.post(f"{self.url}auth/agent-register", json={"name": name}, timeout=10)
        reply.raise_for_status()
        if verify:
            httpx.get(reply.json()["claim_url"], timeout=10).raise_for_status()
        return str(reply.json()["api_key"])

    def new_org(self) -> str:
        """A fresh, empty org: created straight in the hub's database while it runs."""
        import anyio

        return anyio.run(new_org, self.database)


async def new_org(database: Path | str) -> str:
    """A fresh, empty org created straight in ``database``; its name."""
    name = f"org{next(_orgs)}-{os.getpid()}"
    store = await open_store(database)
    await store.create_org(name, time.time())
    await store.close()
    return name


@contextmanager
def hub_process(folder: Path, port: int | None = None, **hub: Any) -> Iterator[HubProcess]:
    """Start ``hub serve`` on a free loopback port; stop it on exit. ``hub``: [hub] keys."""
    port = port or free_port()
    config = write_hub_config(folder, port, **hub)
    init = cli("hub", "init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    database = hub.get("database") or folder / "state" / "hub.sqlite"
    with serve_hub(config, folder / "hub.log") as proc:
        yield HubProcess(f"http://127.0.0.1:{port}/", database, proc)


@contextmanager
def serve_hub(config: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``hub serve --config config`` until the block ends; its log goes to log_path."""
    port = int(tomllib.loads(config.read_text())["hub"]["listen_port"])
    with log_path.open("wb") as log_file:  # a file, not a pipe: a full pipe would stall the hub
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearchd", "hub", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/", proc, log_path)
        yield proc
    finally:
        stop(proc)


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited: {log_path.read_text()}")
        try:
            if httpx.get(f"{url}healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("hub did not become healthy")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
