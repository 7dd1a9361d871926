"""The SQLite store's one writer: a thread that commits the writes queued meanwhile together.

Each write is a function of the writer's connection. Callers queue them; the writer thread
takes every write that queued while its last commit was in flight (at most
:data:`GROUP_LIMIT`), runs each in its own ``SAVEPOINT`` of one transaction and commits them
together, so a group costs one fsync of the WAL (``synchronous = FULL``) instead of one per
write. A write whose own statements raise is rolled back to its savepoint alone (whose
journal the writer keeps in memory) and its neighbours commit; what a write returns (a
refusal, a conflict) is its caller's only. The full-text index statements of the writes
that landed run after the last of them, before the commit (so FTS5 adds one segment to
its index per group, not one per write). Every caller is answered after the commit that
holds its write has returned, never before. The writers of several processes on one file
(a hub's workers) take turns at its write lock (:class:`Turns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from autoresearchd.hub.storage.sqlite_statements import Busy, holding_index, run_index

#: The most writes one commit holds: enough to share an fsync among many, small enough that
#: the first of a group does not wait long for the last.
GROUP_LIMIT = 64

T = TypeVar("T")

log = structlog.get_logger(__name__)


@dataclass(eq=False)
class _Job:
    func: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = field(default=None)


def _settle(job: _Job, error: BaseException | None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(job.result)


class GroupWriter:
    """One writer thread on one connection, committing queued writes in groups.

    ``connect`` opens the connection (on the writer thread), ``translate`` turns what a write
    raised into what its caller gets. ``limit`` caps a group; 1 commits every write alone.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        translate: Callable[[BaseException], BaseException],
        *,
        limit: int = GROUP_LIMIT,
        turns: Turns | None = None,
    ) -> None:
        if limit < 1:
            raise ValueError(f"group limit: {limit} is below 1")
        self._connect = connect
        self._translate = translate
        self._limit = limit
        self._turns = turns
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: ``PRAGMA wal_autocheckpoint`` the writer sets before its next group.
        self.autocheckpoint = 1000
        self._applied: int | None = None
        #: Commits and writes so far (writes / commits is the mean group size).
        self.commits = 0
        self.writes = 0

    async def run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """Queue ``func`` and wait until the commit holding it has returned.

        The wait is shielded: once queued, the write lands whatever becomes of its caller,
        as it did when it ran inline, so its caller learns its outcome.
        """
        loop = asyncio.get_running_loop()
        job = _Job(func, loop, loop.create_future())
        self._start()
        self._queue.put(job)
        with anyio.CancelScope(shield=True):
            result: T = await job.future
        return result

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="hub-sqlite-writer", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        """Let the queued writes land, then end the thread (blocking: call it in a thread)."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join()
        if self._turns is not None:
            self._turns.close()

    def _serve(self) -> None:
        conn = self._connect()
        # A write's savepoint copies the pages it changes into a sub-journal, which SQLite
        # spills to a temporary file past 64 KiB: a file created, written and deleted in
        # most groups. In memory, it is a copy.
        conn.execute("PRAGMA temp_store = MEMORY")
        while True:
            group, stop = self._take()
            if group:
                self._group(conn, group)
            if stop:
                return

    def _take(self) -> tuple[list[_Job], bool]:
        """The next write (waiting for one) and what else is queued, up to the limit."""
        first = self._queue.get()
        if first is None:
            return [], True
        group = [first]
        while len(group) < self._limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return group, True
            group.append(job)
        return group, False

    def _group(self, conn: sqlite3.Connection, group: Sequence[_Job]) -> None:
        try:
            with self._turns.turn() if self._turns else contextlib.nullcontext():
                self._pragmas(conn)
                self._commit(conn, group)
        except BaseException as exc:  # the writer itself failed: no caller waits forever
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._answer(group, exc)  # a caller answered already keeps its answer

    def _pragmas(self, conn: sqlite3.Connection) -> None:
        if self._applied != self.autocheckpoint:
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(self.autocheckpoint)}")
            self._applied = self.autocheckpoint

    def _commit(self, conn: sqlite3.Connection, group: Sequence[_Job]) -> None:
        try:
            _begin(conn)
        except BaseException as exc:
            self._answer(group, exc)
            return
        index: list[tuple[str, tuple[Any, ...]]] = []  # the group's, run before its commit
        for n, job in enumerate(group):
            _apply(conn, job, index)
            if not conn.in_transaction:  # an error that ends the transaction (I/O, disk full)
                lost = job.error or sqlite3.OperationalError("the transaction ended")
                self._answer(group[:n], lost)  # their statements went with it
                self._answer([job], lost)
                if n + 1 < len(group):
                    self._commit(conn, group[n + 1 :])
                return
        try:
            run_index(conn, index)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._answer(group, exc)
            return
        self.commits += 1
        self.writes += len(group)
        self._answer(group)

    def _answer(self, jobs: Sequence[_Job], error: BaseException | None = None) -> None:
        for job in jobs:
            failure = error if error is not None else job.error
            out = None if failure is None else self._translate(failure)
            try:
                job.loop.call_soon_threadsafe(_settle, job, out)
            except RuntimeError:  # the caller's loop has closed: nobody waits for it
                pass


def _begin(conn: sqlite3.Connection) -> None:
    """Take the write lock, waiting (the busy timeout) for another process that holds it."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            raise Busy from None
        raise


def _apply(conn: sqlite3.Connection, job: _Job, index: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Run one write in its own savepoint, rolled back alone if it raises; its full-text
    index statements go to ``index``, for the end of the group (``holding_index``)."""
    conn.execute("SAVEPOINT write")
    try:
        with holding_index() as held:
            job.result = job.func(conn)
    except BaseException as exc:
        job.error = exc
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO write")
                conn.execute("RELEASE write")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        return
    conn.execute("RELEASE write")
    index += held


class Turns:
    """The writers of every process on one database file, taking turns at its write lock.

    SQLite's own wait for a lock another process holds is a poll (sleeps of up to 100 ms
    between tries, :data:`~autoresearchd.hub.storage.sqlite.BUSY_TIMEOUT_S` in all), so a
    writer that commits group after group can keep another process's writer waiting long.
    Holding an ``flock`` on ``<database>-writer`` around each group's transaction instead
    queues them in the kernel, which wakes the next writer as soon as a commit ends. The
    lock is taken before SQLite's and never while waiting for it, so no two writers wait
    on each other; a writer outside the hub (``sqlite3``) still gets SQLite's poll. As
    SQLite does for its ``-wal`` file, root gives the file the database's owner, so that an
    admin's ``hub revoke`` cannot lock the hub out of it. Where the file cannot be opened
    or locked anyway, the writer goes without it (SQLite's poll alone), with a warning.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + "-writer")
        self._fd: int | None = None
        self._unusable = False

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        fd = self._open()
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # a sandbox that forbids it: SQLite's poll still serves
                self._give_up(exc)
                fd = None
        try:
            yield
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        if self._fd is None and not self._unusable:
            try:
                # Read-only is enough for flock, so a file another user made still serves.
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                self._give_up(exc)
                return None
            if os.geteuid() == 0:
                with contextlib.suppress(OSError):  # the lock serves this process anyway
                    owner = os.stat(self.database)
                    os.fchown(self._fd, owner.st_uid, owner.st_gid)
        return self._fd

    def _give_up(self, exc: OSError) -> None:
        self.close()
        self._unusable = True
        log.warning("sqlite_writer_turns_off", path=str(self.path), error=str(exc))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
