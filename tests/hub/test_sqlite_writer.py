"""The SQLite store's one writer: patient with a lock held elsewhere without blocking the
event loop, and committing the writes that queue meanwhile in groups, each with its own outcome."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.errors import HubError
from autoresearchd.hub.storage.protocol import (
    REASON_EXISTS,
    REASON_REFUSED,
    REASON_VERSION,
    CreateKey,
    KeyWrite,
    Step,
    UpdateKey,
    WriteOutcome,
    WritePolicy,
)
from autoresearchd.hub.storage.rows import Agent, NewMemory
from autoresearchd.hub.storage.sqlite import SqliteStore
from autoresearchd.hub.storage.sqlite_writer import GroupWriter, Turns

pytestmark = pytest.mark.anyio


async def test_a_write_waits_for_a_lock_held_elsewhere_without_blocking_reads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hub.sqlite"
    store = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        assert await store.create_org("first", 0.0)
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        done = anyio.Event()

        async def write() -> None:
            assert await store.create_org("second", 1.0)
            done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write)
            await anyio.sleep(0.3)
            assert not done.is_set()
            assert await store.org_exists("first")  # the loop still serves reads
            assert not await store.org_exists("second")
            other.execute("COMMIT")
            with anyio.fail_after(10):
                await done.wait()
        assert await store.org_exists("second")
        assert await store.create_org("third", 2.0)  # and the writer goes on
    finally:
        other.close()
        await store.close()


async def test_the_writers_of_several_processes_take_turns_before_the_write_lock(
    tmp_path: Path,
) -> None:
    """While another process's writer has its turn, this one waits for the turn (woken by
    the kernel as it ends) rather than in SQLite's poll for the write lock."""
    path = tmp_path / "hub.sqlite"
    store = SqliteStore(path)
    other = Turns(path)  # its own open file, as another process's: the two exclude each other
    try:
        assert await store.create_org("first", 0.0)
        done = anyio.Event()

        async def write() -> None:
            assert await store.create_org("second", 1.0)
            done.set()

        async with anyio.create_task_group() as tasks:
            with other.turn():
                tasks.start_soon(write)
                await anyio.sleep(0.3)
                assert not done.is_set()
                probe = sqlite3.connect(path, isolation_level=None, timeout=0)
                probe.execute("BEGIN IMMEDIATE")  # SQLite's lock is free: the writer waits
                probe.execute("ROLLBACK")  # for its turn, not for SQLite
                probe.close()
            with anyio.fail_after(10):
                await done.wait()
        assert await store.org_exists("second")
    finally:
        other.close()
        await store.close()


async def test_a_writer_whose_turns_file_cannot_be_opened_writes_without_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hub.sqlite"
    (tmp_path / "hub.sqlite-writer").mkdir()  # in the way: open() fails, as for mode 0600
    store = SqliteStore(path)
    try:
        with capture_logs() as logs:
            assert await store.create_org("first", 0.0)
            assert await store.create_org("second", 1.0)
        assert [e["event"] for e in logs] == ["sqlite_writer_turns_off"]  # said once
        assert await store.org_exists("second")
    finally:
        await store.close()


async def test_the_turns_file_belongs_to_the_database_s_owner(tmp_path: Path) -> None:
    """As root (an admin's ``hub revoke``) the file gets the owner of the database, so the
    hub's own user can still open it; anyone else owns both already."""
    path = tmp_path / "hub.sqlite"
    store = SqliteStore(path)
    try:
        if os.geteuid() == 0:
            os.chown(path, 54321, 54321)  # the hub's user
        assert await store.create_org("first", 0.0)
        owner, turns = path.stat(), (tmp_path / "hub.sqlite-writer").stat()
        assert (turns.st_uid, turns.st_gid) == (owner.st_uid, owner.st_gid)
    finally:
        await store.close()


ALICE = Agent("alice", verified=True)
ANYONE = WritePolicy(lambda current, evidence: None)
NOBODY = WritePolicy(lambda current, evidence: "closed")


def note(key: str, value: str = "v") -> NewMemory:
    return NewMemory(f"@o/insights/{key}", value, False, "a note")


def key_write(key: str, value: str = "v", policy: WritePolicy | None = None) -> KeyWrite:
    return KeyWrite(ALICE, note(key, value), 1.0, policy, None, "")


def half_then_unstorable() -> Generator[Step, Any, None]:
    """A plan that creates a key, then fails binding a lone surrogate: all or nothing."""
    yield CreateKey(key_write("half"))
    yield UpdateKey(key_write("half", "\ud800", ANYONE), 1)


async def test_a_group_keeps_each_write_s_own_outcome(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite"
    store = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.create_org("o", 0.0)
        assert (await store.create(ALICE, note("taken"), 0.0)).version == 1
        commits = store.writer.commits
        other.execute("BEGIN IMMEDIATE")  # the writer waits on it, so the next writes queue
        outcomes: dict[str, WriteOutcome | BaseException] = {}

        async def keep(name: str, write: Any) -> None:
            try:
                outcomes[name] = await write
            except HubError as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(keep, "blocker", store.create(ALICE, note("blocker"), 1.0))
            await anyio.sleep(0.2)  # the writer has taken it and waits for the lock
            tasks.start_soon(keep, "fresh", store.create(ALICE, note("fresh"), 1.0))
            tasks.start_soon(keep, "exists", store.create(ALICE, note("taken"), 1.0))
            taken = note("taken", "w")
            tasks.start_soon(keep, "stale", store.update(ALICE, taken, 7, ANYONE, 1.0))
            tasks.start_soon(keep, "refused", store.update(ALICE, taken, 1, NOBODY, 1.0))
            tasks.start_soon(keep, "broken", store.transact(half_then_unstorable()))
            tasks.start_soon(keep, "moved", store.update(ALICE, taken, 1, ANYONE, 1.0))
            await anyio.sleep(0.2)
            assert not outcomes  # nobody is answered before a commit
            other.execute("COMMIT")
        assert store.writer.commits == commits + 2  # the blocker alone, then one group of 6
        assert outcomes["blocker"] == WriteOutcome(version=1)
        assert outcomes["fresh"] == WriteOutcome(version=1)
        assert outcomes["exists"] == WriteOutcome(reason=REASON_EXISTS, current_version=1)
        assert outcomes["stale"] == WriteOutcome(reason=REASON_VERSION, current_version=1)
        assert outcomes["refused"] == WriteOutcome(reason=REASON_REFUSED, detail="closed")
        broken = outcomes["broken"]
        assert isinstance(broken, HubError) and broken.status == 400, broken
        assert outcomes["moved"] == WriteOutcome(version=2)
        got = await store.get(
            ["@o/insights/fresh", "@o/insights/half", "@o/insights/taken", "@o/insights/blocker"]
        )
        fresh, half, taken_now, blocker = got
        assert fresh is not None and blocker is not None
        assert half is None  # the failed plan's create was rolled back with it, alone
        assert taken_now is not None and taken_now.version == 2 and taken_now.value == "w"
        actions = [e.action for e in await store.history("@o/insights/half", 10)]
        assert actions == []
    finally:
        other.close()
        await store.close()


async def test_many_concurrent_writers_all_land_and_versions_count_right(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "hub.sqlite")
    try:
        await store.create_org("o", 0.0)
        await store.create(ALICE, note("counter", "0"), 0.0)
        writers = 150

        async def bump(i: int) -> None:
            while True:  # read, then compare-and-set; a lost race reads again
                (current,) = await store.get(["@o/insights/counter"])
                assert current is not None
                value = note("counter", str(int(current.value) + 1))
                done = await store.update(ALICE, value, current.version, ANYONE, 1.0)
                if done.version is not None:
                    return
                assert done.reason == REASON_VERSION

        async def create(i: int) -> None:
            assert (await store.create(ALICE, note(f"k{i}"), 1.0)).version == 1

        commits = store.writer.commits
        writes = store.writer.writes
        async with anyio.create_task_group() as tasks:
            for i in range(writers):
                tasks.start_soon(bump, i)
                tasks.start_soon(create, i)
        (counter,) = await store.get(["@o/insights/counter"])
        assert counter is not None
        assert counter.value == str(writers) and counter.version == writers + 1
        assert len(await store.list_keys("@o/insights/k", 1000)) == writers
        history = await store.history("@o/insights/counter", 1000)
        assert [e.version for e in history] == list(range(writers + 1, 0, -1))
        assert store.writer.writes - writes >= 2 * writers
        assert store.writer.commits - commits < store.writer.writes - writes  # groups formed
    finally:
        await store.close()


def slow_commits(path: Path, started: list[float]) -> sqlite3.Connection:
    """A real connection whose every COMMIT starts 0.2 s late, noting when it was due."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")

    def trace(statement: str) -> None:
        if statement == "COMMIT":
            started.append(time.monotonic())
            time.sleep(0.2)

    conn.set_trace_callback(trace)
    return conn


async def test_no_caller_is_answered_before_the_commit_holding_its_write(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    started: list[float] = []
    conns: list[sqlite3.Connection] = []
    lock = threading.Lock()

    def connect() -> sqlite3.Connection:
        with lock:
            conns.append(slow_commits(path, started))
        return conns[-1]

    writer = GroupWriter(connect, lambda exc: exc, limit=8)
    reader = sqlite3.connect(path, isolation_level=None)
    seen: dict[int, bool] = {}

    async def insert(n: int) -> None:
        await writer.run(lambda c: c.execute("INSERT INTO t (n) VALUES (?)", (n,)))
        # Another connection sees only committed rows: the write must be there already.
        seen[n] = reader.execute("SELECT 1 FROM t WHERE n = ?", (n,)).fetchone() is not None

    try:
        async with anyio.create_task_group() as tasks:
            for n in range(20):
                tasks.start_soon(insert, n)
        assert seen == {n: True for n in range(20)}
        assert 3 <= writer.commits < 20 and writer.writes == 20  # groups of at most 8
    finally:
        await anyio.to_thread.run_sync(writer.stop)
        reader.close()
        for conn in conns:
            conn.close()


async def test_a_write_that_raises_is_rolled_back_alone_and_its_caller_gets_the_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.sqlite"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    setup.execute("BEGIN IMMEDIATE")  # hold the lock, so the writes after the first queue
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    writer = GroupWriter(lambda: conn, lambda exc: exc)
    answers: dict[str, object] = {}

    def clash(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t (n) VALUES (3)")  # a statement of its own that lands first
        c.execute("INSERT INTO t (n) VALUES (1)")  # then a constraint failure

    async def run(name: str, func: Any) -> None:
        try:
            answers[name] = await writer.run(func)
        except sqlite3.IntegrityError as exc:
            answers[name] = exc

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, "one", lambda c: c.execute("INSERT INTO t VALUES (1)").rowcount)
            await anyio.sleep(0.2)  # the writer has taken it and waits for the lock
            tasks.start_soon(run, "clash", clash)
            tasks.start_soon(run, "two", lambda c: c.execute("INSERT INTO t VALUES (2)").rowcount)
            await anyio.sleep(0.2)
            setup.execute("COMMIT")
        assert writer.commits == 2  # "one" alone, then "clash" and "two" together
        assert answers["one"] == 1 and answers["two"] == 1
        assert isinstance(answers["clash"], sqlite3.IntegrityError)
        assert [r[0] for r in setup.execute("SELECT n FROM t ORDER BY n")] == [1, 2]
    finally:
        await anyio.to_thread.run_sync(writer.stop)
        conn.close()
        setup.close()


async def test_a_write_past_64_kib_rolls_back_alone_from_a_sub_journal_in_memory(
    tmp_path: Path,
) -> None:
    """SQLite spills a savepoint's sub-journal to a temporary file past 64 KiB of pages, a
    file per write; the writer keeps it in memory, and rolling back to it still works."""
    path = tmp_path / "w.sqlite"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB)")
    setup.executemany("INSERT INTO t VALUES (?, zeroblob(4000))", [(n,) for n in range(100)])
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    writer = GroupWriter(lambda: conn, lambda exc: exc)

    def rewrite_then_fail(c: sqlite3.Connection) -> None:
        c.execute("UPDATE t SET pad = randomblob(4000)")  # 100 pages of 4 KiB, then
        c.execute("INSERT INTO t (n) VALUES (0)")  # a constraint failure

    try:
        assert await writer.run(lambda c: c.execute("PRAGMA temp_store").fetchone()[0]) == 2
        with pytest.raises(sqlite3.IntegrityError):
            await writer.run(rewrite_then_fail)
        assert await writer.run(lambda c: c.execute("DELETE FROM t WHERE n = 99").rowcount) == 1
        pads = setup.execute("SELECT count(*), sum(pad = zeroblob(4000)) FROM t").fetchone()
        assert pads == (99, 99)  # every page as it was before the failed write
    finally:
        await anyio.to_thread.run_sync(writer.stop)
        conn.close()
        setup.close()


async def test_a_group_indexes_what_its_writes_left_in_their_order_and_none_of_a_failed_one(
    tmp_path: Path,
) -> None:
    """The full-text index statements of a group run after its last write: what search
    finds is what each write, in order, left indexed, and nothing of a write rolled back."""
    path = tmp_path / "hub.sqlite"
    store = SqliteStore(path)
    other = sqlite3.connect(path, isolation_level=None)

    async def found(query: str) -> list[str]:
        return [hit.memory.key_name for hit in await store.search(query, "@o/", 10)]

    try:
        await store.create_org("o", 0.0)
        assert (await store.create(ALICE, note("gone", "zebra"), 0.0)).version == 1
        commits = store.writer.commits
        other.execute("BEGIN IMMEDIATE")  # the writer waits on it, so the next writes queue
        outcomes: list[object] = []

        async def keep(write: Any) -> None:
            try:
                outcomes.append(await write)
            except HubError as exc:
                outcomes.append(exc)

        writes = [
            store.create(ALICE, note("moved", "alpha"), 1.0),
            store.update(ALICE, note("moved", "gamma"), 1, ANYONE, 1.0),
            store.delete(ALICE, "@o/insights/gone", 1.0),
            store.create(ALICE, note("gone", "omega"), 1.0),  # again, as a new row
            store.transact(half_then_unstorable()),  # creates "half", then fails
        ]
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(keep, store.create(ALICE, note("blocker", "blocker"), 1.0))
            await anyio.sleep(0.2)  # the writer has taken it and waits for the lock
            for write in writes:
                tasks.start_soon(keep, write)
                await anyio.sleep(0.02)  # queued in this order
            await anyio.sleep(0.2)
            other.execute("COMMIT")
        assert store.writer.commits == commits + 2  # the blocker alone, then one group
        assert isinstance(outcomes[-1], HubError)
        assert await found("alpha") == [] and await found("gamma") == ["@o/insights/moved"]
        assert await found("zebra") == [] and await found("omega") == ["@o/insights/gone"]
        assert await found("half") == []
        counts = await store.select("SELECT count(*) FROM memories_fts", [])
        assert counts == [(3,)]  # blocker, moved, gone
    finally:
        other.close()
        await store.close()
