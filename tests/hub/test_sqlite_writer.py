"""The SQLite store's one writer: on the event loop, and patient with a lock held elsewhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from autoresearchd.hub.storage.sqlite import SqliteStore

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
        assert await store.create_org("third", 2.0)  # and the writer is back on the loop
    finally:
        other.close()
        await store.close()
