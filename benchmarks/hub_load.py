"""Load the hub on loopback with simulated agents; compare with the store used in-process.

Starts a real ``autoresearchd hub serve`` process on a free loopback port, registers N
agents and lets each loop for a fixed time over its own ``EnsueMemory`` client: claim a
candidate, publish a keep result (moving the bests by compare-and-set when it wins) and
read the best. It prints throughput and p50/p99 latency per operation, then runs the
same operations straight on a ``SqliteStore`` in this process and prints, last, the ratio
of hub throughput to store throughput.

    python benchmarks/hub_load.py --agents 20 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import anyio
import httpx

from autoresearchd.hub.store import NewMemory, SqliteStore
from autoresearchd.logs import configure_logging
from autoresearchd.memory.ensue import EnsueMemory
from autoresearchd.models import Result, Status, sha256_text

ORG = "bench"
TRACK = "synthetic"
Latencies = dict[str, list[float]]


def make_result(agent: str, rng: random.Random) -> Result:
    source = f"LR = {rng.random()!r}\n"
    return Result(
        id=uuid.uuid4().hex,
        agent_id=agent,
        track=TRACK,
        status=Status.KEEP,
        val_bpb=rng.uniform(0.9, 1.1),
        description="LR 0.04 → 0.05",
        train_py=source,
        train_py_sha256=sha256_text(source),
        parent_sha256=None,
        seed=rng.randrange(1 << 30),
        device_name="bench",
        device_uuid="GPU-bench",
        memory_gb=80.0,
        vram_tier="xl",
        started_at=time.time(),
        completed_at=time.time(),
        duration_s=1.0,
    )


async def timed(latencies: Latencies, name: str, op: Callable[[], Awaitable[object]]) -> None:
    started = time.perf_counter()
    await op()
    latencies[name].append(time.perf_counter() - started)


async def hub_agent(url: str, key: str, name: str, deadline: float, latencies: Latencies) -> None:
    rng = random.Random(name)
    async with EnsueMemory(url, ORG, key, primary_track=TRACK, timeout_s=30.0) as memory:
        while time.monotonic() < deadline:
            result = make_result(name, rng)
            sha = result.train_py_sha256
            await timed(latencies, "claim", partial(memory.claim, TRACK, sha, name, 600.0))
            await timed(latencies, "publish", partial(memory.publish, result))
            await timed(latencies, "best", partial(memory.get_best, TRACK))


class StoreAgent:
    """The same primitive calls the client makes for each operation, straight on a store."""

    def __init__(self, store: SqliteStore, name: str) -> None:
        self.store, self.name, self.root = store, name, f"@{ORG}/"

    async def claim(self, sha: str) -> None:
        record = json.dumps({"agent_id": self.name, "sha256": sha, "expires_at": 1e10})
        await self.store.create(
            self.name, NewMemory(f"{self.root}claims/t--{sha[:12]}", record, False), time.time()
        )

    async def publish(self, result: Result) -> None:
        marker = f"{self.root}published/{result.id}"
        await self.store.get([marker])
        text = json.dumps(result.to_record())
        await self.store.create(
            self.name, NewMemory(f"{self.root}results/{result.id}", text, False), time.time()
        )
        await self.store.create(self.name, NewMemory(marker, "{}", False), time.time())
        await self.store.create(
            self.name,
            NewMemory(f"{self.root}runs/{result.train_py_sha256}", "{}", False),
            time.time(),
        )
        for base in ("best/", "best/tier/xl/"):
            await self._move(self.root + base, result)

    async def _move(self, base: str, result: Result) -> None:
        meta, train = await self.store.get([base + "metadata", base + "train_py"])
        current = json.loads(meta.value)["val_bpb"] if meta else None
        if current is not None and not (result.val_bpb or 2.0) < current:
            return
        text = json.dumps({"val_bpb": result.val_bpb})
        for key, value, row in (
            (base + "metadata", text, meta),
            (base + "train_py", result.train_py, train),
        ):
            if row is None:
                await self.store.create(self.name, NewMemory(key, value, False), time.time())
            else:
                await self.store.update(
                    self.name,
                    NewMemory(key, value, False),
                    row.version,
                    lambda _: None,
                    time.time(),
                )

    async def best(self) -> None:
        await self.store.get([f"{self.root}best/metadata", f"{self.root}best/train_py"])


async def store_agent(store: SqliteStore, name: str, deadline: float, latencies: Latencies) -> None:
    rng, agent = random.Random(name), StoreAgent(store, name)
    while time.monotonic() < deadline:
        result = make_result(name, rng)
        await timed(latencies, "claim", partial(agent.claim, result.train_py_sha256))
        await timed(latencies, "publish", partial(agent.publish, result))
        await timed(latencies, "best", agent.best)


def report(label: str, latencies: Latencies, seconds: float) -> float:
    total = sum(len(v) for v in latencies.values())
    print(f"{label}: {total} operations in {seconds:.1f} s = {total / seconds:.1f} ops/s")
    for name in ("claim", "publish", "best"):
        values = sorted(latencies[name])
        if values:
            p50 = statistics.median(values) * 1000
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))] * 1000
            print(f"  {name:8s} n={len(values):6d}  p50={p50:7.2f} ms  p99={p99:7.2f} ms")
    return total / seconds


def start_hub(folder: Path, port: int) -> subprocess.Popen[bytes]:
    config = folder / "hub.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{folder}"\nlog_level = "warning"\n[hub]\nlisten_port = {port}\n'
        f'org = "{ORG}"\nrate_limit_per_s = 1e9\nrate_limit_burst = 1000000000\n'
    )
    cli = [sys.executable, "-m", "autoresearchd", "hub"]
    subprocess.run([*cli, "init", "--config", str(config)], check=True, capture_output=True)
    proc = subprocess.Popen([*cli, "serve", "--config", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the hub did not start")


async def run_hub(folder: Path, agents: int, seconds: float, port: int) -> float:
    proc = start_hub(folder, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        async with httpx.AsyncClient() as client:
            replies = [
                await client.post(f"{url}auth/agent-register", json={"name": f"agent{i}"})
                for i in range(agents)
            ]
        keys = [reply.json()["api_key"] for reply in replies]
        latencies: Latencies = defaultdict(list)
        deadline = time.monotonic() + seconds
        async with anyio.create_task_group() as tg:
            for i, key in enumerate(keys):
                tg.start_soon(hub_agent, url, key, f"agent{i}", deadline, latencies)
        return report(f"hub ({agents} agents over HTTP)", latencies, seconds)
    finally:
        proc.terminate()
        proc.wait()


async def run_store(folder: Path, agents: int, seconds: float) -> float:
    store = SqliteStore(folder / "direct.sqlite")
    await store.create_org(ORG, time.time())
    latencies: Latencies = defaultdict(list)
    deadline = time.monotonic() + seconds
    async with anyio.create_task_group() as tg:
        for i in range(agents):
            tg.start_soon(store_agent, store, f"agent{i}", deadline, latencies)
    await store.close()
    return report(f"store ({agents} agents in-process)", latencies, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    configure_logging("console", "warning", sys.stderr)
    port = args.port or _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        hub = anyio.run(run_hub, Path(tmp), args.agents, args.seconds, port)
        store = anyio.run(run_store, Path(tmp), args.agents, args.seconds)
    print(f"hub/store throughput ratio: {hub / store:.3f}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
