"""The embedded collective memory: one SQLite file, for solo mode with no network.

:class:`SqliteMemory` implements :class:`~autoresearchd.memory.protocol.CollectiveMemory`
on a single connection in WAL mode. Every call runs in a worker thread, off the event
loop, and one lock serialises them, so the many workers of one daemon may call it at
once. Each operation is one ``BEGIN IMMEDIATE`` transaction, so claims and bests stay
atomic even when another process opens the same file; the busy timeout makes that
process wait its turn instead of failing. Results are stored whole as JSON, with the
columns that queries need alongside. Every move of a best is appended to
``best_history`` in the transaction that stores the result.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import anyio
import anyio.to_thread
import structlog

from autoresearchd.errors import MemoryBackendError, TransientMemoryError
from autoresearchd.memory.protocol import BestChange, MemoryState, Note, PublishOutcome
from autoresearchd.models import Best, Result, Status

log = structlog.get_logger(__name__)

BACKEND = "sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
NOTE_KINDS = ("hypotheses", "insights")
#: The ``scope`` column value of a track's overall best (tier bests use the tier name).
TRACK_SCOPE = ""

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    track TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    val_bpb REAL,
    train_py_sha256 TEXT NOT NULL,
    completed_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_sha ON results (track, train_py_sha256);
CREATE INDEX IF NOT EXISTS results_by_time ON results (track, completed_at, seq);
CREATE INDEX IF NOT EXISTS results_by_time_all ON results (completed_at, seq);
CREATE TABLE IF NOT EXISTS bests (
    track TEXT NOT NULL,
    scope TEXT NOT NULL,
    val_bpb REAL NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (track, scope)
);
CREATE TABLE IF NOT EXISTS best_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    track TEXT NOT NULL,
    scope TEXT NOT NULL,
    at REAL NOT NULL,
    agent_id TEXT NOT NULL,
    val_bpb REAL NOT NULL,
    description TEXT NOT NULL,
    train_py_sha256 TEXT NOT NULL,
    result_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS best_history_by_scope ON best_history (track, scope, seq);
CREATE TABLE IF NOT EXISTS claims (
    track TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (track, sha256)
);
CREATE INDEX IF NOT EXISTS claims_by_expiry ON claims (expires_at);
CREATE TABLE IF NOT EXISTS notes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (kind, key)
);
CREATE INDEX IF NOT EXISTS notes_by_time ON notes (kind, created_at, seq);
"""

#: Result codes that say the disk, not the data, is at fault: "database or disk is full"
#: and "disk I/O error" (ENOSPC can surface as either, depending on which write met it).
_PASSING = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)

T = TypeVar("T")


class SqliteMemory:
    """The collective memory in one SQLite file (see the module docstring).

    ``clock`` gives the time in seconds used for claim expiry and best timestamps;
    tests inject a fake one.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._state = MemoryState.UNOPENED
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    async def __aenter__(self) -> Self:
        if self._state is not MemoryState.UNOPENED:
            raise MemoryBackendError(
                f"cannot open a memory that is {self._state.name.lower()}", backend=BACKEND
            )
        self._conn = await anyio.to_thread.run_sync(_connect, self.path)
        self._state = MemoryState.OPENED
        log.debug("memory_opened", backend=BACKEND, path=str(self.path))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        self._state = MemoryState.CLOSED
        if conn is not None:
            async with self._lock:
                await anyio.to_thread.run_sync(conn.close)
        log.debug("memory_closed", backend=BACKEND, path=str(self.path))

    async def _call(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``func`` on the connection in a thread, one call at a time."""
        if self._state is not MemoryState.OPENED or self._conn is None:
            raise MemoryBackendError(
                f"memory is {self._state.name.lower()}; use it inside 'async with'",
                backend=BACKEND,
            )
        conn = self._conn
        async with self._lock:
            with _translate_errors(self.path):
                return await anyio.to_thread.run_sync(func, conn)

    async def get_best(self, track: str, tier: str | None = None) -> Best | None:
        scope = TRACK_SCOPE if tier is None else tier
        return await self._call(lambda conn: _get_best(conn, track, scope))

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        now = self._clock()
        return await self._call(lambda conn: _claim(conn, track, sha256, agent_id, now, ttl_s))

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        await self._call(lambda conn: _release(conn, track, sha256, agent_id))

    async def publish(self, result: Result) -> PublishOutcome:
        now = self._clock()
        outcome = await self._call(lambda conn: _publish(conn, result, now))
        log.debug(
            "result_stored",
            backend=BACKEND,
            result_id=result.id,
            created=outcome.created,
            best_improved=list(outcome.best_improved),
        )
        return outcome

    async def best_history(
        self, track: str, tier: str | None = None, limit: int | None = 100
    ) -> list[BestChange]:
        scope = TRACK_SCOPE if tier is None else tier
        return await self._call(lambda conn: _best_history(conn, track, scope, limit))

    async def results(self, track: str | None = None, limit: int | None = 100) -> list[Result]:
        return await self._call(lambda conn: _results(conn, track, limit))

    async def was_run(self, track: str, sha256: str) -> bool:
        now = self._clock()
        return await self._call(lambda conn: _was_run(conn, track, sha256, now))

    async def put_note(self, kind: str, note: Note) -> bool:
        _check_kind(kind)
        return await self._call(lambda conn: _put_note(conn, kind, note))

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        _check_kind(kind)
        return await self._call(lambda conn: _notes(conn, kind, limit))

    async def select(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        """The rows of one read-only query, for the dashboard (not part of the Protocol)."""
        return await self._call(lambda conn: _select(conn, sql, params))


# --- connection and errors -------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database file and bring its schema up to date."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MemoryBackendError(
            f"{path}: cannot create its folder: {exc.strerror}", backend=BACKEND
        ) from None
    with _translate_errors(path):
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so every write takes
        # the database lock up front instead of upgrading (and deadlocking) mid-transaction.
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a stored result must survive power loss, since the outbox drops it once stored.
    conn.execute("PRAGMA synchronous = FULL")
    with _transaction(conn):
        for statement in filter(str.strip, SCHEMA.split(";")):
            conn.execute(statement)
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0]
        if version is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif version > SCHEMA_VERSION:
            raise MemoryBackendError(
                f"{path}: schema version {version} is newer than this autoresearchd "
                f"supports ({SCHEMA_VERSION}); upgrade autoresearchd",
                backend=BACKEND,
            )


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # some errors (SQLITE_FULL, ...) have rolled back already
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def _translate_errors(path: Path) -> Iterator[None]:
    """Turn sqlite3 errors into one-line typed errors that name the file."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise TransientMemoryError(f"{path}: database is busy", backend=BACKEND) from None
        if code in _PASSING:  # a full disk or a failed write: retry once it has room again
            raise TransientMemoryError(
                f"{path}: {exc}{_disk_hint(path)}", backend=BACKEND
            ) from None
        raise MemoryBackendError(f"{path}: {exc}", backend=BACKEND) from None
    except sqlite3.Error as exc:
        raise MemoryBackendError(
            f"{path}: cannot use the database: {exc}", backend=BACKEND
        ) from None


def _disk_hint(path: Path) -> str:
    """Say so when the database's disk is full: "disk I/O error" alone hides the cause."""
    try:
        full = os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return ""
    return " (its disk is full)" if full else ""


def _check_kind(kind: str) -> None:
    if kind not in NOTE_KINDS:
        expected = " or ".join(NOTE_KINDS)
        raise MemoryBackendError(f"unknown note kind {kind!r}; expected {expected}", key=kind)


# --- operations: each runs in a worker thread, holding the lock ------------------------


def _get_best(conn: sqlite3.Connection, track: str, scope: str) -> Best | None:
    row = conn.execute(
        "SELECT record FROM bests WHERE track = ? AND scope = ?", (track, scope)
    ).fetchone()
    return Best.from_record(json.loads(row[0])) if row else None


def _claim(
    conn: sqlite3.Connection, track: str, sha256: str, agent_id: str, now: float, ttl_s: float
) -> bool:
    with _transaction(conn):
        conn.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))
        holder = conn.execute(
            "SELECT agent_id FROM claims WHERE track = ? AND sha256 = ?", (track, sha256)
        ).fetchone()
        if holder is not None and holder[0] != agent_id:
            return False
        conn.execute(
            "INSERT OR REPLACE INTO claims (track, sha256, agent_id, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (track, sha256, agent_id, now + ttl_s),
        )
        return True


def _release(conn: sqlite3.Connection, track: str, sha256: str, agent_id: str) -> None:
    with _transaction(conn):
        conn.execute(
            "DELETE FROM claims WHERE track = ? AND sha256 = ? AND agent_id = ?",
            (track, sha256, agent_id),
        )


def _publish(conn: sqlite3.Connection, result: Result, now: float) -> PublishOutcome:
    with _transaction(conn):
        inserted = conn.execute(
            "INSERT OR IGNORE INTO results (id, track, agent_id, status, val_bpb,"
            " train_py_sha256, completed_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result.id,
                result.track,
                result.agent_id,
                str(result.status),
                result.val_bpb,
                result.train_py_sha256,
                result.completed_at,
                json.dumps(result.to_record()),
            ),
        ).rowcount
        if not inserted:
            return PublishOutcome(created=False)
        return PublishOutcome(created=True, best_improved=_move_bests(conn, result, now))


def _move_bests(conn: sqlite3.Connection, result: Result, now: float) -> tuple[str, ...]:
    """Move each best (track, then tier) that ``result`` beats; return the scopes moved."""
    bpb = result.best_bpb
    if result.status is not Status.KEEP or bpb is None or not math.isfinite(bpb):
        return ()
    moved = []
    scopes = (TRACK_SCOPE, result.vram_tier) if result.vram_tier else (TRACK_SCOPE,)
    for scope in scopes:
        row = conn.execute(
            "SELECT val_bpb FROM bests WHERE track = ? AND scope = ?", (result.track, scope)
        ).fetchone()
        if row is not None and not bpb < row[0]:
            continue
        best = _best_from(result, None if scope == TRACK_SCOPE else scope, bpb, now)
        conn.execute(
            "INSERT OR REPLACE INTO bests (track, scope, val_bpb, record) VALUES (?, ?, ?, ?)",
            (result.track, scope, bpb, json.dumps(best.to_record())),
        )
        conn.execute(
            "INSERT INTO best_history (track, scope, at, agent_id, val_bpb, description,"
            " train_py_sha256, result_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                result.track,
                scope,
                now,
                result.agent_id,
                bpb,
                result.description,
                result.train_py_sha256,
                result.id,
            ),
        )
        moved.append("track" if scope == TRACK_SCOPE else scope)
    return tuple(moved)


def _best_from(result: Result, tier: str | None, bpb: float, now: float) -> Best:
    return Best(
        track=result.track,
        tier=tier,
        val_bpb=bpb,
        train_py=result.train_py,
        train_py_sha256=result.train_py_sha256,
        result_id=result.id,
        agent_id=result.agent_id,
        updated_at=now,
    )


def _best_history(
    conn: sqlite3.Connection, track: str, scope: str, limit: int | None
) -> list[BestChange]:
    rows = conn.execute(
        "SELECT at, agent_id, val_bpb, description, train_py_sha256, result_id FROM best_history"
        " WHERE track = ? AND scope = ? ORDER BY seq DESC LIMIT ?",
        (track, scope, -1 if limit is None else limit),
    ).fetchall()
    return [BestChange(*row) for row in rows]


def _results(conn: sqlite3.Connection, track: str | None, limit: int | None) -> list[Result]:
    where, args = ("WHERE track = ?", [track]) if track is not None else ("", [])
    rows = conn.execute(
        f"SELECT record FROM results {where} ORDER BY completed_at DESC, seq DESC LIMIT ?",
        (*args, -1 if limit is None else limit),
    ).fetchall()
    return [Result.from_record(json.loads(row[0])) for row in rows]


def _was_run(conn: sqlite3.Connection, track: str, sha256: str, now: float) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM results WHERE track = ? AND train_py_sha256 = ?)"
        " OR EXISTS (SELECT 1 FROM claims WHERE track = ? AND sha256 = ? AND expires_at > ?)",
        (track, sha256, track, sha256, now),
    ).fetchone()
    return bool(row[0])


def _put_note(conn: sqlite3.Connection, kind: str, note: Note) -> bool:
    with _transaction(conn):
        inserted = conn.execute(
            "INSERT OR IGNORE INTO notes (kind, key, agent_id, value, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (kind, note.key, note.agent_id, json.dumps(note.value), note.created_at),
        ).rowcount
    return bool(inserted)


def _notes(conn: sqlite3.Connection, kind: str, limit: int) -> list[Note]:
    rows = conn.execute(
        "SELECT key, agent_id, value, created_at FROM notes WHERE kind = ?"
        " ORDER BY created_at DESC, seq DESC LIMIT ?",
        (kind, limit),
    ).fetchall()
    return [Note(key=k, agent_id=a, value=json.loads(v), created_at=c) for k, a, v, c in rows]


def _select(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...]
) -> list[tuple[object, ...]]:
    if not sql.lstrip().upper().startswith("SELECT"):
        raise MemoryBackendError("select runs SELECT statements only", backend=BACKEND)
    return [tuple(row) for row in conn.execute(sql, params).fetchall()]
