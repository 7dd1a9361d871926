"""The hub's data in one SQLite file: :class:`SqliteStore`, the ``HubStore`` Protocol's
SQLite dialect.

The file runs in WAL mode with ``synchronous = FULL``, so a write the hub acknowledged has
reached the disk and survives a power loss, not only a crash of the process. Writes run on
one writer connection in one writer thread, which commits the writes that queued during its
last commit together, one fsync of the WAL for the group
(:mod:`~autoresearchd.hub.storage.sqlite_writer`, where the writers of several processes on
the file, a hub's workers, take turns at its write lock); reads by key run inline on the
event loop, while scans and searches, whose cost grows with the data, run in worker threads
with a connection each, and a serving hub checkpoints the WAL in a thread (a checkpoint of
another process's in progress is skipped, not waited for). The statements themselves are
:mod:`~autoresearchd.hub.storage.sqlite_statements`; the file brings its schema up to date on
open (:mod:`~autoresearchd.hub.storage.sqlite_migrations`) in a write transaction, so of
several processes opening it at once one migrates and the others find it current. Each
process caches the agent of an API key (:mod:`~autoresearchd.hub.keycache`), kept true
across processes by the ``auth_epoch`` row every change of an agent bumps.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from autoresearchd.errors import HubError
from autoresearchd.hub.keycache import KeyCache
from autoresearchd.hub.storage import sqlite_statements as sql
from autoresearchd.hub.storage.protocol import KeyWrite, Plan, WriteOutcome, WritePolicy
from autoresearchd.hub.storage.rows import Agent, AuditEntry, Hit, Memory, NewMemory, ResultRow
from autoresearchd.hub.storage.shared_sql import unstorable
from autoresearchd.hub.storage.sqlite_migrations import migrate
from autoresearchd.hub.storage.sqlite_writer import GroupWriter, Turns

BUSY_TIMEOUT_S = 30.0
#: ``FULL``: a WAL commit waits until the log is on the disk, so an acknowledged result
#: survives a power loss (``NORMAL`` loses the last commits then, though not on a crash).
SYNCHRONOUS = "FULL"
#: How often a serving hub checkpoints the WAL (in a thread), and the pages at which
#: SQLite does it itself at a commit when no hub serves.
CHECKPOINT_EVERY_S = 2.0
AUTOCHECKPOINT_PAGES = 1000
#: The most writes one commit holds (1: a commit per write, for comparison only).
GROUP_LIMIT = 64


T = TypeVar("T")


class SqliteStore:
    """The hub's data in one SQLite file (see the module docstring)."""

    def __init__(
        self, path: Path, *, synchronous: str | None = None, group_limit: int | None = None
    ) -> None:
        self.path = Path(path)
        #: ``FULL`` unless told (:data:`SYNCHRONOUS`, read when the store opens).
        self.synchronous = synchronous or SYNCHRONOUS
        if self.synchronous not in ("FULL", "NORMAL"):
            raise HubError(f"synchronous: {self.synchronous!r} is neither FULL nor NORMAL")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()  # guards the list of connections, not the data
        self._checkpointing = False
        #: The writer thread; ``group_limit`` (:data:`GROUP_LIMIT` unless told) caps a commit.
        self.writer = GroupWriter(
            self._connect, self._error, limit=group_limit or GROUP_LIMIT, turns=Turns(self.path)
        )
        self.writer.autocheckpoint = AUTOCHECKPOINT_PAGES
        self._keys: KeyCache[Agent] = KeyCache()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = exc.strerror or str(exc)
            raise HubError(f"{self.path}: cannot create its folder: {problem}") from None
        with self._translate(), sql.transaction(self._conn()) as conn:
            #: The schema version the file was at and is now at.
            self.schema_change = migrate(conn, self.path)

    def _connect(self, timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        _enter_wal(conn, timeout_s)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        if self._checkpointing:
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's reading connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _translate(self) -> Iterator[None]:
        """Database errors as HubErrors (a write lock held elsewhere too long: 503)."""
        try:
            yield
        except (UnicodeEncodeError, OverflowError) as exc:  # raised binding a parameter
            raise unstorable(exc) from None
        except sql.Busy:
            raise HubError(f"{self.path}: the database stays locked", status=503) from None
        except sqlite3.Error as exc:
            raise HubError(f"{self.path}: database error: {exc}", status=503) from None

    async def _run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """A read whose cost grows with the data (a scan, a search), in a worker thread."""

        def work() -> T:
            with self._translate():
                return func(self._conn())

        return await anyio.to_thread.run_sync(work)

    def _read(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """A read by primary key, on the calling thread: it takes microseconds, less than
        the hand-off to a thread would, and a WAL reader never waits for the writer."""
        with self._translate():
            return func(self._conn())

    def _error(self, exc: BaseException) -> BaseException:
        """What a caller gets for what its write raised: database errors as HubErrors."""
        try:
            with self._translate():
                raise exc
        except BaseException as out:  # handed to the caller, who raises it
            return out

    async def _write(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """A write on the one writer connection, in the writer thread's next group commit;
        it returns once that commit (one fsync of the WAL, ``FULL``) has."""
        return await self.writer.run(func)

    async def watch(self) -> None:
        """Checkpoint the WAL in a worker thread while the hub serves, so that no commit on
        the event loop does it (and waits for the disk)."""
        self._checkpointing = True
        self.writer.autocheckpoint = 0
        try:
            while True:
                await anyio.sleep(CHECKPOINT_EVERY_S)
                await anyio.to_thread.run_sync(self._checkpoint)
        finally:
            self._checkpointing = False
            self.writer.autocheckpoint = AUTOCHECKPOINT_PAGES

    def _checkpoint(self) -> None:
        with self._translate():
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.writer.stop)
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    async def create_org(self, name: str, now: float) -> bool:
        return await self._write(lambda c: sql.insert_org(c, name, now))

    async def org_exists(self, name: str) -> bool:
        row = self._read(
            lambda c: c.execute("SELECT 1 FROM orgs WHERE name = ?", (name,)).fetchone()
        )
        return row is not None

    async def register(self, agent: Agent, key_hash: str, code_hash: str, now: float) -> bool:
        return await self._write(lambda c: sql.insert_agent(c, agent, key_hash, code_hash, now))

    async def verify(self, name: str, code_hash: str, now: float) -> bool:
        return await self._write(lambda c: sql.verify(c, name, code_hash, now))

    async def forget(self, name: str, key_hash: str, now: float) -> bool:
        return await self._write(lambda c: sql.forget(c, name, key_hash, now))

    async def revoke(self, name: str, now: float) -> bool:
        return await self._write(lambda c: sql.revoke(c, name, now))

    async def agent_for(self, key_hash: str) -> Agent | None:
        return self._read(lambda c: sql.agent_for(c, key_hash, self._keys))

    async def create(
        self,
        agent: Agent,
        item: NewMemory,
        now: float,
        *,
        policy: WritePolicy | None = None,
        result: ResultRow | None = None,
        detail: str = "",
    ) -> WriteOutcome:
        return await self._write(
            lambda c: sql.create(c, KeyWrite(agent, item, now, policy, result, detail))
        )

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        return self._read(lambda c: sql.get(c, key_names))

    async def update(
        self,
        agent: Agent,
        item: NewMemory,
        if_match: int | None,
        policy: WritePolicy,
        now: float,
        *,
        detail: str = "",
    ) -> WriteOutcome:
        write = KeyWrite(agent, item, now, policy, None, detail)
        return await self._write(lambda c: sql.update(c, write, if_match))

    async def transact(self, plan: Plan[T]) -> T:
        return await self._write(lambda c: sql.transact(c, plan))

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        return await self._run(lambda c: sql.list_keys(c, prefix, limit))

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        return await self._run(lambda c: sql.search(c, query, prefix, limit))

    async def history(self, key_name: str, limit: int) -> list[AuditEntry]:
        return await self._run(lambda c: sql.history(c, key_name, limit))

    async def delete(self, agent: Agent, key_name: str, now: float) -> bool:
        return await self._write(lambda c: sql.delete(c, agent.name, key_name, now))

    async def mark_verified(self, name: str, now: float) -> bool:
        return await self._write(lambda c: sql.mark_verified(c, name, now))

    async def select(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._run(lambda c: sql.select(c, query, params))


#: Between tries of switching a file to WAL that another process is switching too.
WAL_RETRY_S = 0.01


def _enter_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``PRAGMA journal_mode = WAL``, tried again while another process holds the lock: the
    switch answers "database is locked" at once, without the busy timeout, when several
    processes (a hub's workers) open a new file together."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(WAL_RETRY_S)
