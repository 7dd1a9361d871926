"""Time every dashboard page and data endpoint over a store of 100,000 results.

Fills a fresh hub database (SQLite, and with ``--postgres`` a throwaway PostgreSQL
cluster too) with ``--results`` result records from ``--agents`` agents, the way the hub
stores them: the record in ``memories``, its indexed row in ``results``, the bests' moves
in ``audit``, plus hypotheses and claims. The rows are written in bulk, straight into
the tables, since publishing 100,000 results one by one would take far longer than the
reads being measured. Then it asks the hub app (in-process, over ``httpx.ASGITransport``)
for each page ``--repeat`` times and prints the median and the worst time of each next
to a trivial endpoint measured in the same run, and the ratio to it. The goal is under
300 ms for every page.

    python benchmarks/dashboard.py
    python benchmarks/dashboard.py --results 20000 --postgres
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx

from autoresearchd.config import HubConfig
from autoresearchd.hub.app import build_app
from autoresearchd.hub.storage.auto import open_store
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.shared_sql import DASHBOARD_BACKFILL, DETAIL_COLUMNS, RESULT_COLUMNS
from autoresearchd.models import sha256_text

ORG = "bench"
TRACK = "synthetic"
GOAL_MS = 300.0
STATUSES = ("discard",) * 16 + ("keep",) + ("crash",) * 2 + ("timeout",)
TIERS = ("small", "medium", "large", "xl")
PROPOSERS = ("perturb", "tpe", "hypotheses", "mixed")
TEMPLATE = Path(__file__).resolve().parent.parent / "train.py"
CONFIG = HubConfig(
    org=ORG,
    dashboard="public",
    require_email=False,
    replicates=0,
    rate_limit_ip_per_s=1e9,  # one client asks for everything here, as fast as it can
    rate_limit_ip_burst=10**9,
)


def records(count: int, agents: int, seed: int = 7) -> Iterator[tuple[str, dict[str, Any], float]]:
    """``(key, record, at)`` for ``count`` results; one in three reruns an earlier source."""
    rng = random.Random(seed)
    base = TEMPLATE.read_text()
    shas: list[tuple[str, str]] = []
    at = time.time() - count * 10.0
    for n in range(count):
        agent = f"agent{rng.randrange(agents):03d}"
        if shas and n % 3 == 0:
            source, parent = shas[rng.randrange(max(0, len(shas) - 50), len(shas))]
        else:
            source = base.replace("0.04", repr(round(rng.uniform(0.01, 0.1), 6)), 1)
            source += f"\n# variant {n}\n"
            parent = sha256_text(base)
            shas.append((source, parent))
        status = rng.choice(STATUSES)
        at += 10.0
        yield (
            f"@{ORG}/results/{agent}--lr--{n:06x}",
            {
                "id": f"{agent}-{n:08d}",
                "agent_id": agent,
                "track": TRACK,
                "status": status,
                "val_bpb": None if status in ("crash", "timeout") else rng.uniform(0.9, 1.2),
                "description": f"MATRIX_LR 0.04 → {rng.uniform(0.01, 0.1):.4f}",
                "train_py": source,
                "train_py_sha256": sha256_text(source),
                "parent_sha256": parent,
                "seed": n,
                "vram_tier": rng.choice(TIERS),
                "proposer": rng.choice(PROPOSERS),
                "duration_s": 300.0,
                "provisional": status == "discard" and rng.random() < 0.1,
                "device_name": "NVIDIA H100",
                "metrics": {"num_steps": 900.0},
            },
            at,
        )


def result_row(key: str, record: dict[str, Any], at: float, first: str) -> tuple[Any, ...]:
    """The ``results`` row of RESULT_COLUMNS, created_at, DETAIL_COLUMNS, first_agent."""
    return (
        key, ORG, record["agent_id"], 1, record["id"], TRACK, record["train_py_sha256"],
        record["seed"], record["status"], int(record["provisional"]), record["val_bpb"], at,
        record["vram_tier"], record["proposer"], record["description"], record["duration_s"],
        record["parent_sha256"], first,
    )  # fmt: skip


def memory_row(key: str, owner: str, value: dict[str, Any], at: float) -> tuple[Any, ...]:
    text = base64.b64encode(json.dumps(value).encode()).decode()
    return (key, owner, "", text, 1, 1, at, at, 1)


def rows(count: int, agents: int) -> tuple[list[tuple[Any, ...]], ...]:
    memories, results, audit = [], [], []
    best, firsts = 10.0, {}
    for key, record, at in records(count, agents):
        memories.append(memory_row(key, record["agent_id"], record, at))
        first = firsts.setdefault(record["train_py_sha256"], record["agent_id"])
        results.append(result_row(key, record, at, first))
        if record["status"] == "keep" and record["val_bpb"] < best:
            best = record["val_bpb"]
            detail = json.dumps({"val_bpb": best, "agent_id": record["agent_id"],
                                 "description": record["description"],
                                 "train_py_sha256": record["train_py_sha256"],
                                 "result_id": record["id"]})  # fmt: skip
            audit.append((at, record["agent_id"], "update", f"@{ORG}/best/metadata", 1, detail))
        if len(memories) % 5 == 0:
            claim = {"agent_id": record["agent_id"], "track": TRACK,
                     "sha256": record["train_py_sha256"], "claimed_at": at,
                     "expires_at": at + 600.0, "released": True}  # fmt: skip
            memories.append(memory_row(f"@{ORG}/claims/{TRACK}--{key[-6:]}", "x", claim, at))
        if len(memories) % 200 == 0:
            note = {"title": "try more", "hypothesis": "raise LR", "agent_id": record["agent_id"]}
            memories.append(memory_row(f"@{ORG}/hypotheses/{key[-6:]}", "x", note, at))
    return memories, results, audit


MEMORY_SQL = (
    "INSERT INTO memories (key_name, owner, description, value, is_base64, version,"
    " created_at, updated_at, verified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
RESULT_SQL = (
    f"INSERT INTO results ({RESULT_COLUMNS}, created_at, {DETAIL_COLUMNS}, first_agent)"
    f" VALUES ({', '.join('?' * 18)})"
)
AUDIT_SQL = "INSERT INTO audit (at, agent, action, key_name, version, detail) VALUES (?,?,?,?,?,?)"


def fill_sqlite(path: Path, data: tuple[list[tuple[Any, ...]], ...]) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for sql, batch in zip((MEMORY_SQL, RESULT_SQL, AUDIT_SQL), data, strict=True):
        conn.executemany(sql, batch)
    for statement in filter(str.strip, DASHBOARD_BACKFILL.split(";\n")):
        conn.execute(statement)  # the standings, as the hub keeps them while it indexes
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, data: tuple[list[tuple[Any, ...]], ...]) -> None:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        memories = [(*row[:4], True, row[5], *row[6:8], True, "") for row in data[0]]
        cur.executemany(
            MEMORY_SQL.replace(", verified)", ", verified, document)")
            .replace("?, ?)", "?, ?, to_tsvector('simple', ?))")
            .replace("?", "%s"),
            memories,
        )
        results = [(*r[:3], True, *r[4:9], bool(r[9]), *r[10:]) for r in data[1]]
        cur.executemany(RESULT_SQL.replace("?", "%s"), results)
        cur.executemany(AUDIT_SQL.replace("?", "%s"), data[2])
        cur.execute(DASHBOARD_BACKFILL)
        cur.execute("ANALYZE")


def paths(sample_key: str, deep: str) -> list[str]:
    return [
        "/dashboard/",
        "/dashboard/results",
        f"/dashboard/results?before={deep}",
        "/dashboard/results?agent=agent007",
        "/dashboard/results?status=keep",
        "/dashboard/results?tier=medium&proposer=tpe",
        f"/dashboard/result/{sample_key}",
        "/dashboard/leaderboard",
        "/dashboard/lineage",
        "/dashboard/notes?kind=hypotheses",
        "/dashboard/api/summary",
        "/dashboard/api/results?status=crash",
        f"/dashboard/api/points?track={TRACK}",
        f"/dashboard/api/points?track={TRACK}&tier=small",
        "/dashboard/api/leaderboard",
        f"/dashboard/api/lineage?track={TRACK}",
        "/dashboard/api/notes?kind=hypotheses",
        "/dashboard/api/claims",
    ]


async def measure(store: HubStore, label: str, repeat: int) -> bool:
    app = build_app(store, CONFIG)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        page = (await client.get("/dashboard/api/results?limit=200")).json()
        deep = page["next"]
        for _ in range(100):  # 20,000 rows down
            page = (await client.get(f"/dashboard/api/results?limit=200&before={deep}")).json()
            deep = page["next"] or deep
        sample = page["results"][0]["key"]
        trivial = await timings(client, "/dashboard/api/ping", repeat)
        base = statistics.median(trivial)
        print(f"{label}: trivial page median {base:.2f} ms (the baseline)")
        ok = True
        for path in paths(sample, deep):
            times = await timings(client, path, repeat)
            median, worst = statistics.median(times), max(times)
            ok &= worst < GOAL_MS
            shown = path if len(path) < 60 else path[:57] + "..."
            print(f"  {shown:60s} median {median:7.2f} ms  worst {worst:7.2f} ms"
                  f"  x{median / base:6.1f}")  # fmt: skip
    return ok


async def timings(client: httpx.AsyncClient, path: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        reply = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if reply.status_code != 200:
            raise SystemExit(f"{path}: HTTP {reply.status_code}: {reply.text[:200]}")
    return times


async def run_sqlite(folder: Path, data: tuple[list[tuple[Any, ...]], ...], repeat: int) -> bool:
    path = folder / "hub.sqlite"
    store = await open_store(path)
    await store.create_org(ORG, time.time())
    fill_sqlite(path, data)
    try:
        return await measure(store, "SQLite", repeat)
    finally:
        await store.close()


async def run_postgres(data: tuple[list[tuple[Any, ...]], ...], repeat: int) -> bool:
    from autoresearchd.hub.storage.postgres_migrations import migrate_database
    from autoresearchd.testing.pgcluster import start_cluster

    cluster = start_cluster()
    try:
        url = cluster.create_database("bench")
        await migrate_database(url)
        store = await open_store(url)
        await store.create_org(ORG, time.time())
        fill_postgres(url, data)
        try:
            return await measure(store, "PostgreSQL", repeat)
        finally:
            await store.close()
    finally:
        cluster.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--postgres", action="store_true", help="measure PostgreSQL too")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = rows(args.results, args.agents)
    print(f"{args.results} results from {args.agents} agents, {len(data[0])} keys,"
          f" built in {time.perf_counter() - started:.1f} s")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as folder:
        ok = anyio.run(run_sqlite, Path(folder), data, args.repeat)
    if args.postgres:
        ok &= anyio.run(run_postgres, data, args.repeat)
    print(f"every page under {GOAL_MS:.0f} ms: {'yes' if ok else 'no'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
