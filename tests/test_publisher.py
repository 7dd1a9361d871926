"""The publisher delivers every result, whatever the disk does: a full outbox folder
holds results in memory, a full SQLite memory is retried and never parked, and the
final flush says whether anything is left only in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd import publisher as publisher_module
from autoresearchd.memory import SqliteMemory
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from tests.memory.conformance import make_result

from .full_disk import SmallFilesystem, small_filesystem

pytestmark = pytest.mark.anyio

#: Large enough that storing it needs fresh database pages.
BIG_SOURCE = "LR = 0.1\n" + "# padding\n" * 20_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallFilesystem]:
    with small_filesystem(tmp_path / "fs") as disk:
        yield disk


@pytest.fixture
async def memory(tmp_path: Path) -> AsyncIterator[SqliteMemory]:
    async with SqliteMemory(tmp_path / "memory.sqlite") as opened:
        yield opened


def opened_outbox(root: Path) -> Outbox:
    outbox = Outbox(root)
    outbox.open()
    return outbox


def cap(memory: SqliteMemory) -> None:
    """Let the database file grow no more: SQLite then says "database or disk is full"."""
    assert memory._conn is not None
    pages = memory._conn.execute("PRAGMA page_count").fetchone()[0]
    memory._conn.execute(f"PRAGMA max_page_count = {pages}")


def uncap(memory: SqliteMemory) -> None:
    assert memory._conn is not None
    memory._conn.execute("PRAGMA max_page_count = 1073741823")


def quick(outbox: Outbox, memory: SqliteMemory) -> Publisher:
    return Publisher(outbox, memory, min_backoff_s=0.01, max_backoff_s=0.05)


async def test_held_results_are_published_while_the_outbox_disk_is_full(
    small_disk: SmallFilesystem, memory: SqliteMemory
) -> None:
    outbox = opened_outbox(small_disk.path / "outbox")
    small_disk.fill()
    result = make_result()
    assert not outbox.put(result)
    publisher = quick(outbox, memory)
    assert await publisher.drain() == 1
    assert await memory.results() == [result]
    assert outbox.held() == [] and outbox.depth() == 0
    assert await publisher.flush(1.0)


async def test_a_full_database_is_retried_and_never_parked(
    small_disk: SmallFilesystem, tmp_path: Path
) -> None:
    outbox = opened_outbox(tmp_path / "outbox")
    result = make_result(train_py=BIG_SOURCE)
    outbox.put(result)
    async with SqliteMemory(small_disk.path / "memory.sqlite") as memory:
        small_disk.fill()
        if not small_disk.real:  # the fallback cannot reach SQLite's own writes
            cap(memory)
        publisher = quick(outbox, memory)
        with capture_logs() as logs:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(publisher.drain)
                with anyio.fail_after(30):
                    while sum(e["event"] == "publish_retry" for e in logs) < 3:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                assert list(outbox.failed_dir.iterdir()) == [], "a full disk is no refusal"
                assert outbox.depth() == 1
                small_disk.free()
                uncap(memory)
        assert "database or disk is full" in next(
            e["error"] for e in logs if e["event"] == "publish_retry"
        )
        assert [r.id for r in await memory.results()] == [result.id]
    assert outbox.depth() == 0 and not any(e["event"] == "publish_failed" for e in logs)


async def test_a_queued_result_is_synced_at_once_while_a_publish_retries(
    memory: SqliteMemory, tmp_path: Path
) -> None:
    outbox = opened_outbox(tmp_path / "outbox")
    outbox.put(make_result(train_py=BIG_SOURCE))
    cap(memory)  # every publish is refused as transient, and retried
    publisher = quick(outbox, memory)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publisher.serve)
            with anyio.fail_after(30):
                while not any(e["event"] == "publish_retry" for e in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                second = make_result(train_py=BIG_SOURCE + "# two\n")
                outbox.put(second)
                assert outbox.unsynced() == 1
                publisher.notify()
                while outbox.unsynced():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            tasks.cancel_scope.cancel()
    uncap(memory)
    assert outbox.depth() == 2


async def test_flush_is_false_while_a_result_exists_only_in_memory(
    small_disk: SmallFilesystem, memory: SqliteMemory
) -> None:
    outbox = opened_outbox(small_disk.path / "outbox")
    small_disk.fill()
    cap(memory)
    outbox.put(make_result(train_py=BIG_SOURCE))
    assert outbox.depth() == 1
    assert not await quick(outbox, memory).flush(0.3)


async def test_serving_writes_held_results_out_once_space_returns(
    small_disk: SmallFilesystem, memory: SqliteMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "SPILL_S", 0.05)
    outbox = opened_outbox(small_disk.path / "outbox")
    cap(memory)  # the memory keeps refusing, so only the disk can save the result
    small_disk.fill()
    result = make_result(train_py=BIG_SOURCE)
    outbox.put(result)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(quick(outbox, memory).serve)
            await anyio.sleep(0.3)
            assert outbox.held() == [result], "still full: still held"
            small_disk.free()
            with anyio.fail_after(10):
                while outbox.held():  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()
    assert (outbox.root / f"{result.id}.json").is_file()
    assert any(e["event"] == "outbox_write_resumed" for e in logs)
