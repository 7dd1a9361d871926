"""Load the hub on loopback with simulated agents: SQLite, PostgreSQL, and several replicas.

Runs three configurations in one go, each on a fresh database: SQLite with one hub
process, PostgreSQL with one, and PostgreSQL with ``--replicas`` hub processes sharing
the database (agent i talks to replica i mod N, as behind a load balancer). Each
registers ``--agents`` verified agents that loop for ``--seconds`` over their own
``EnsueMemory`` client: claim a candidate, publish a keep result (moving the bests by
compare-and-set when it wins) and read the best. It prints throughput and p50/p99
latency per operation, then, last, the ratio of PostgreSQL with N replicas to SQLite
with one. Without ``--database`` it starts a throwaway PostgreSQL cluster of its own
(``synchronous_commit = off``, like SQLite's WAL with ``synchronous = NORMAL``).

    python benchmarks/hub_load.py --agents 20 --seconds 5 --replicas 2
    python benchmarks/hub_load.py --database postgresql://hub@db.internal/bench
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import httpx
import psycopg

from autoresearchd.logs import configure_logging
from autoresearchd.memory.ensue import EnsueMemory
from autoresearchd.models import Result, Status, sha256_text
from autoresearchd.testing.pgcluster import start_cluster

ORG = "bench"
TRACK = "synthetic"
OPERATIONS = ("claim", "publish", "best")
Latencies = dict[str, list[float]]
UNLIMITED = (
    "rate_limit_per_s = 1e9\nrate_limit_burst = 1000000000\n"
    "rate_limit_ip_per_s = 1e9\nrate_limit_ip_burst = 1000000000\n"
    "auth_rate_limit_per_s = 1e9\nauth_rate_limit_burst = 1000000000\n"
    "require_email = false\nreplicates = 0\n"
)


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
    async with EnsueMemory(url, ORG, key, primary_track=TRACK, timeout_s=60.0) as memory:
        while time.monotonic() < deadline:
            result = make_result(name, rng)
            sha = result.train_py_sha256
            await timed(latencies, "claim", partial(memory.claim, TRACK, sha, name, 600.0))
            await timed(latencies, "publish", partial(memory.publish, result))
            await timed(latencies, "best", partial(memory.get_best, TRACK))


def report(label: str, latencies: Latencies, seconds: float) -> float:
    every = sorted(v for values in latencies.values() for v in values)
    rate = len(every) / seconds
    print(
        f"{label}: {len(every)} operations in {seconds:.1f} s = {rate:.1f} ops/s,"
        f" p99 {_p99(every) * 1000:.1f} ms"
    )
    for name in OPERATIONS:
        values = sorted(latencies[name])
        if values:
            p50, p99 = statistics.median(values) * 1000, _p99(values) * 1000
            print(f"  {name:8s} n={len(values):6d}  p50={p50:7.2f} ms  p99={p99:7.2f} ms")
    return rate


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else 0.0


def write_config(folder: Path, port: int, database: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "hub.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{folder}"\nlog_level = "warning"\n[hub]\nlisten_port = {port}\n'
        f'org = "{ORG}"\ndatabase = "{database}"\n{UNLIMITED}'
    )
    return config


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if proc.poll() is not None:
            raise SystemExit(f"the hub at {url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"the hub at {url} did not start")


@contextlib.contextmanager
def hubs(folder: Path, database: str, replicas: int) -> Iterator[list[str]]:
    """``replicas`` hub processes on one database (initialised once); their URLs."""
    cli = [sys.executable, "-m", "autoresearchd", "hub"]
    configs = [write_config(folder / str(i), _free_port(), database) for i in range(replicas)]
    subprocess.run([*cli, "init", "--config", str(configs[0])], check=True, capture_output=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for config in configs:
            procs.append(subprocess.Popen([*cli, "serve", "--config", str(config)]))
            urls.append(
                f"http://127.0.0.1:{config.read_text().split('listen_port = ')[1].split()[0]}/"
            )
            wait_healthy(urls[-1], procs[-1])
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


async def register(urls: list[str], agents: int) -> list[str]:
    """``agents`` verified agents' keys, agent i registered on replica i mod N."""
    keys = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(agents):
            reply = await client.post(
                f"{urls[i % len(urls)]}auth/agent-register", json={"name": f"agent{i}"}
            )
            reply.raise_for_status()
            (await client.get(reply.json()["claim_url"])).raise_for_status()
            keys.append(reply.json()["api_key"])
    return keys


async def load(urls: list[str], agents: int, seconds: float) -> Latencies:
    keys = await register(urls, agents)
    latencies: Latencies = defaultdict(list)
    deadline = time.monotonic() + seconds
    async with anyio.create_task_group() as tg:
        for i, key in enumerate(keys):
            tg.start_soon(hub_agent, urls[i % len(urls)], key, f"agent{i}", deadline, latencies)
    return latencies


def run(label: str, folder: Path, database: str, replicas: int, args: argparse.Namespace) -> float:
    with hubs(folder, database, replicas) as urls:
        latencies = anyio.run(load, urls, args.agents, args.seconds)
    return report(f"{label} ({args.agents} agents over HTTP)", latencies, args.seconds)


def fresh_schema(url: str, name: str) -> str:
    """A new schema ``name`` in the database at ``url``; a URL whose search_path is it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}".encode())
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"


def benchmark(url: str, folder: Path, args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    sqlite = run("SQLite, 1 replica", folder / "sqlite", str(folder / "hub.sqlite"), 1, args)
    one = run("PostgreSQL, 1 replica", folder / "pg1", fresh_schema(url, f"bench1_{tag}"), 1, args)
    many = run(
        f"PostgreSQL, {args.replicas} replicas",
        folder / "pgn",
        fresh_schema(url, f"bench{args.replicas}_{tag}"),
        args.replicas,
        args,
    )
    print(f"PostgreSQL 1 replica / SQLite 1 replica throughput: {one / sqlite:.3f}")
    print(f"PostgreSQL {args.replicas} replicas / SQLite 1 replica throughput: {many / sqlite:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--replicas", type=int, default=2, help="PostgreSQL hub processes")
    parser.add_argument(
        "--database", default="", help="a postgresql:// URL (default: a throwaway cluster)"
    )
    args = parser.parse_args()
    configure_logging("console", "warning", sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        if args.database:
            benchmark(args.database, Path(tmp), args)
            return
        cluster = start_cluster({"synchronous_commit": "off"})
        try:
            benchmark(cluster.url(), Path(tmp), args)
        finally:
            cluster.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
