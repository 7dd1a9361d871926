"""The SQLite backend: the conformance suite, plus what only a file-backed store can show."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.errors import MemoryBackendError, TransientMemoryError
from autoresearchd.memory import SqliteMemory, open_memory
from autoresearchd.memory.sqlite import SCHEMA_VERSION
from tests.full_disk import small_filesystem
from tests.memory.conformance import (
    TRACK,
    TTL_S,
    FakeClock,
    MemoryConformance,
    MemoryFactory,
    make_result,
)


class TestSqliteConformance(MemoryConformance):
    @pytest.fixture
    def make_memory(self, tmp_path: Path) -> MemoryFactory:
        return lambda clock: SqliteMemory(tmp_path / "memory.sqlite", clock=clock)


pytestmark = pytest.mark.anyio


async def test_results_bests_and_claims_persist_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "memory.sqlite"
    clock = FakeClock()
    result = make_result(val_bpb=0.95)
    async with SqliteMemory(path, clock=clock) as memory:
        await memory.publish(result)
        assert await memory.claim(TRACK, "sha-a", "alice", TTL_S)
    async with SqliteMemory(path, clock=clock) as memory:
        assert await memory.results() == [result]
        best = await memory.get_best(TRACK)
        assert best is not None and best.result_id == result.id
        assert not await memory.claim(TRACK, "sha-a", "bob", TTL_S)
        assert not (await memory.publish(result)).created


async def test_database_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    async with SqliteMemory(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.close()


async def test_two_instances_on_one_file_keep_claims_atomic(tmp_path: Path) -> None:
    """Two connections to one file behave like two daemons: still exactly one winner."""
    path = tmp_path / "memory.sqlite"
    wins: list[str] = []
    async with SqliteMemory(path) as first, SqliteMemory(path) as second:

        async def try_claim(memory: SqliteMemory, agent: str) -> None:
            if await memory.claim(TRACK, "sha-a", agent, TTL_S):
                wins.append(agent)

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(try_claim, (first, second)[i % 2], f"agent-{i}")
        assert len(wins) == 1
        assert await second.was_run(TRACK, "sha-a")


CLAIMER = """
import sys, anyio
from pathlib import Path
from autoresearchd.memory import SqliteMemory

async def main(path: str, agent: str, count: int) -> None:
    async with SqliteMemory(Path(path)) as memory:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(count):
            if await memory.claim("synthetic", f"sha-{i}", agent, 600.0):
                print("won", i)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


class Racer:
    """A child process claiming shas 0..count-1 in order once told to go."""

    def __init__(self, path: Path, agent: str, count: int) -> None:
        self.argv = [sys.executable, "-c", CLAIMER, str(path), agent, str(count)]
        self.ready = anyio.Event()
        self.output = b""

    async def run(self, go: anyio.Event) -> None:
        async with await anyio.open_process(self.argv) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            async for chunk in proc.stdout:
                self.output += chunk
                if b"ready\n" in self.output and not self.ready.is_set():
                    self.ready.set()
                    await go.wait()
                    await proc.stdin.send(b"go\n")
            assert await proc.wait() == 0

    @property
    def won(self) -> set[int]:
        lines = self.output.decode().splitlines()
        return {int(line.split()[1]) for line in lines if line.startswith("won ")}


async def test_two_processes_never_both_win_a_claim(tmp_path: Path) -> None:
    """Real processes racing over one file: every sha has exactly one owner."""
    path, count = tmp_path / "memory.sqlite", 500
    async with SqliteMemory(path):
        pass  # create the schema first, so both racers start on equal terms
    alice, bob = Racer(path, "alice", count), Racer(path, "bob", count)
    go = anyio.Event()
    async with anyio.create_task_group() as tg:
        for racer in (alice, bob):
            tg.start_soon(racer.run, go)
        await alice.ready.wait()
        await bob.ready.wait()
        go.set()
    assert alice.won.isdisjoint(bob.won)
    assert alice.won | bob.won == set(range(count))


async def test_two_instances_on_one_file_agree_on_the_best(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    results = [make_result(val_bpb=1.0 - i / 100) for i in range(20)]
    async with SqliteMemory(path) as first, SqliteMemory(path) as second:
        async with anyio.create_task_group() as tg:
            for i, result in enumerate(results):
                tg.start_soon((first, second)[i % 2].publish, result)
        best = await first.get_best(TRACK)
    assert best is not None and best.result_id == results[-1].id


async def test_corrupt_file_gives_one_line_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    path.write_bytes(b"this is not a database, just some junk bytes " * 100)
    with pytest.raises(MemoryBackendError) as info:
        async with SqliteMemory(path):
            pass
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_unwritable_parent_gives_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MemoryBackendError, match="cannot create its folder"):
        async with SqliteMemory(blocker / "sub" / "memory.sqlite"):
            pass


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite"
    async with SqliteMemory(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(MemoryBackendError, match="newer than"):
        async with SqliteMemory(path):
            pass


async def test_memory_cannot_be_opened_twice(tmp_path: Path) -> None:
    memory = SqliteMemory(tmp_path / "memory.sqlite")
    async with memory:
        with pytest.raises(MemoryBackendError, match="opened"):
            await memory.__aenter__()
    with pytest.raises(MemoryBackendError, match="closed"):
        await memory.__aenter__()


async def test_memory_cannot_be_used_before_open_or_after_close(tmp_path: Path) -> None:
    memory = SqliteMemory(tmp_path / "memory.sqlite")
    with pytest.raises(MemoryBackendError, match="unopened"):
        await memory.results()
    async with memory:
        await memory.results()
    with pytest.raises(MemoryBackendError, match="closed"):
        await memory.get_best(TRACK)


async def test_publish_logs_the_stored_result(tmp_path: Path) -> None:
    result = make_result(val_bpb=0.9)
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        with capture_logs() as logs:
            await memory.publish(result)
    stored = [entry for entry in logs if entry["event"] == "result_stored"]
    assert stored == [
        {
            "event": "result_stored",
            "log_level": "debug",
            "backend": "sqlite",
            "result_id": result.id,
            "created": True,
            "best_improved": ["track", "xl"],
        }
    ]


def test_open_memory_builds_sqlite_at_the_configured_path(tmp_path: Path) -> None:
    config = parse_config({"memory": {"path": str(tmp_path / "m.sqlite")}})
    memory = open_memory(config)
    assert isinstance(memory, SqliteMemory)
    assert memory.path == tmp_path / "m.sqlite"
    assert not memory.path.exists()  # building does not open


async def test_best_history_is_written_with_the_result_and_stamped_by_the_clock(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "memory.sqlite"
    first, second = make_result(val_bpb=0.99), make_result(val_bpb=0.95)
    async with SqliteMemory(path, clock=clock) as memory:
        await memory.publish(first)
        clock.advance(10)
        await memory.publish(second)
    async with SqliteMemory(path, clock=clock) as memory:
        history = await memory.best_history(TRACK)
    assert [(c.result_id, c.at) for c in history] == [
        (second.id, clock()),
        (first.id, clock() - 10),
    ]


async def test_a_full_disk_is_transient_and_the_result_lands_once_space_returns(
    tmp_path: Path,
) -> None:
    result = make_result(train_py="LR = 0.1\n" + "# padding\n" * 20_000)
    with small_filesystem(tmp_path / "fs") as disk:
        async with SqliteMemory(disk.path / "memory.sqlite") as memory:
            disk.fill()
            if not disk.real:  # the fallback cannot reach SQLite's own writes: cap the file
                assert memory._conn is not None
                pages = memory._conn.execute("PRAGMA page_count").fetchone()[0]
                memory._conn.execute(f"PRAGMA max_page_count = {pages}")
            with pytest.raises(TransientMemoryError, match="database or disk is full"):
                await memory.publish(result)
            disk.free()
            if not disk.real:
                assert memory._conn is not None
                memory._conn.execute("PRAGMA max_page_count = 1073741823")
            assert (await memory.publish(result)).created
            assert await memory.results() == [result]
