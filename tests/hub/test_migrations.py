"""SQLite's numbered migrations: a hub file made before they were numbered opens and migrates.

``data/hub_schema_3.sql`` is such a file, as SQL text: its schema exactly as the store wrote
it (``schema_version`` 3), and a few rows. PostgreSQL's migrations are tested with its store
in ``test_postgres.py``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearchd.errors import HubError
from autoresearchd.hub.storage.rows import Agent, NewMemory, ResultRow
from autoresearchd.hub.storage.shared_sql import FIRST_AGENT
from autoresearchd.hub.storage.sqlite import SqliteStore
from autoresearchd.hub.storage.sqlite_migrations import MIGRATIONS, SCHEMA_4, SCHEMA_VERSION
from tests.hub.support import cli, free_port, write_hub_config

pytestmark = pytest.mark.anyio

SCHEMA_3 = Path(__file__).parent / "data" / "hub_schema_3.sql"
ALICE = Agent("alice", verified=True, email="a@example.org")


def old_file(folder: Path, *extra: str) -> Path:
    """The schema 3 file, then ``extra`` statements (to age it further)."""
    path = folder / "hub.sqlite"
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA_3.read_text())
        for statement in extra:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    return path


def shape(path: Path) -> dict[str, object]:
    """Every table's columns and every index and trigger, by name: what a schema is."""
    conn = sqlite3.connect(path)
    try:
        names = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        columns = {
            name: [row[1:4] for row in conn.execute(f"PRAGMA table_info({name})")]
            for kind, name in names
            if kind == "table"
        }
        version = conn.execute("SELECT version FROM schema_version").fetchall()
        return {"names": names, "columns": columns, "version": version}
    finally:
        conn.close()


async def test_a_file_from_before_numbered_migrations_opens_keeps_its_rows_and_migrates(
    tmp_path: Path,
) -> None:
    store = SqliteStore(old_file(tmp_path))
    try:
        assert store.schema_change == (3, SCHEMA_VERSION)
        assert await store.org_exists("o")
        assert await store.agent_for("h" * 64) == ALICE
        (note,) = await store.get(["@o/insights/alice/warmup"])
        assert note is not None and note.text == "warmup helps rope" and note.verified
        hits = await store.search("warmup", "@o/", 10)
        assert [hit.memory.key_name for hit in hits] == ["@o/insights/alice/warmup"]
        assert [e.version for e in await store.history("@o/results/alice/r1", 10)] == [1]
        key, sha = "@o/results/alice/r2", "s" * 64
        row = ResultRow(key, "o", "alice", True, "r2", "synthetic", sha, 8, "keep", False, 1.2)
        done = await store.create(
            ALICE, NewMemory(row.key_name, json.dumps({"id": "r2"}), False), 6.0, result=row
        )
        assert done.version == 1
        standing = await store.select(
            "SELECT runs, keeps FROM standings WHERE agent = ?", ["alice"]
        )
        assert standing == [(2, 2)]  # the old row's standing went on counting
    finally:
        await store.close()


async def test_a_migrated_old_file_has_the_schema_of_a_fresh_one(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "fresh").mkdir()
    old = old_file(tmp_path / "old")
    for path in (old, tmp_path / "fresh" / "hub.sqlite"):
        await SqliteStore(path).close()
    assert shape(old) == shape(tmp_path / "fresh" / "hub.sqlite")


#: What every inserted result reads (who first published its source), and its replicates.
SOURCE_READS = (
    f"SELECT {FIRST_AGENT}",
    "SELECT * FROM results WHERE org = ? AND train_py_sha256 = ?"
    " ORDER BY created_at, key_name LIMIT ?",
)


@pytest.mark.parametrize("age", ["fresh", "schema 3", "schema 4"])
async def test_a_sources_results_are_read_by_one_index_seek(tmp_path: Path, age: str) -> None:
    """Not through ``results_by_time``, every result of the org, as before schema 5."""
    path = tmp_path / "hub.sqlite"
    if age == "schema 3":
        old_file(tmp_path)
    elif age == "schema 4":
        old_file(tmp_path, *SCHEMA_4.split(";\n"), "UPDATE schema_version SET version = 4")
    store = SqliteStore(path)
    await store.close()
    assert store.schema_change[1] == SCHEMA_VERSION
    if age == "schema 4":
        assert store.schema_change == (4, SCHEMA_VERSION)
    conn = sqlite3.connect(path)
    try:
        for query in SOURCE_READS:
            params = ("o", "s" * 64, "alice")[: query.count("?")]
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params)]
            assert any(
                "USING INDEX results_by_source (org=? AND train_py_sha256=?)" in step
                for step in plan
            ), plan
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "results_by_sha" not in indexes  # the new index serves its lookups
    finally:
        conn.close()


async def test_a_schema_3_file_without_the_auth_epoch_gets_it_and_revokes_reach_the_cache(
    tmp_path: Path,
) -> None:
    path = old_file(tmp_path, "DROP TABLE auth_epoch")  # as the store wrote it before the cache
    store = SqliteStore(path)
    other = SqliteStore(path)  # a second process on the same file
    try:
        assert await other.agent_for("h" * 64) == ALICE  # now cached there
        assert await store.revoke("alice", 7.0)
        assert await other.agent_for("h" * 64) is None
    finally:
        await store.close()
        await other.close()


async def test_a_file_newer_than_this_hub_is_refused_with_its_version(tmp_path: Path) -> None:
    path = old_file(tmp_path, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HubError, match=rf"schema {SCHEMA_VERSION + 1}, newer than this hub's"):
        SqliteStore(path)


async def test_every_acknowledged_write_waits_for_the_disk(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.sqlite")
    try:
        assert await store.create_org("o", 0.0)
        (mode,) = await store.select("SELECT * FROM pragma_synchronous", [])
        assert mode == (2,)  # FULL: a WAL commit is on the disk before it is acknowledged
    finally:
        await store.close()


def test_hub_migrate_reports_what_it_applied_to_an_old_sqlite_file(tmp_path: Path) -> None:
    database = old_file(tmp_path)
    config = write_hub_config(tmp_path, free_port(), database=str(database))
    first = cli("hub", "migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    applied = "; ".join(f"{m.version} ({m.description})" for m in MIGRATIONS if m.version > 3)
    expected = f"{database}: SQLite schema 3 -> {SCHEMA_VERSION}: applied {applied}"
    assert first.stdout.strip() == expected
    again = cli("hub", "migrate", "--config", str(config))
    assert again.stdout.strip() == f"{database}: SQLite schema {SCHEMA_VERSION}: already current"


#: Opens the store at a moment given in the future, so that the processes start together.
OPEN_AT = """
import sys, time
from pathlib import Path
import anyio
from autoresearchd.hub.storage.sqlite import SqliteStore
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
store = SqliteStore(Path(sys.argv[1]))
anyio.run(store.close)
print(*store.schema_change)
"""
RACERS = 4


@pytest.mark.parametrize("aged", [False, True], ids=["fresh", "schema_3"])
def test_processes_opening_one_file_at_once_migrate_it_once(tmp_path: Path, aged: bool) -> None:
    """The workers of a hub start together: one of them migrates, the others wait for its
    write lock and find the file current."""
    path = old_file(tmp_path) if aged else tmp_path / "hub.sqlite"
    at = str(time.time() + 3.0)  # after every interpreter has imported the store
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT, str(path), at], stdout=subprocess.PIPE, text=True
        )
        for _ in range(RACERS)
    ]
    changes = sorted(racer.communicate(timeout=60)[0] for racer in racers)
    assert [racer.returncode for racer in racers] == [0] * RACERS
    before = 3 if aged else 0
    current = f"{SCHEMA_VERSION} {SCHEMA_VERSION}\n"
    assert changes == sorted([f"{before} {SCHEMA_VERSION}\n"] + [current] * (RACERS - 1))
    assert shape(path)["version"] == [(SCHEMA_VERSION,)]
