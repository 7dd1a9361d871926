"""The hub's storage: the :class:`HubStore` Protocol and its SQLite implementation.

Every guarantee the hub gives lives in the database, never in process memory, so a
PostgreSQL store can implement the same Protocol and several hub replicas can share one
database: create-if-absent is one ``INSERT ... ON CONFLICT DO NOTHING``; compare-and-set
is one ``UPDATE ... WHERE version = ?`` inside the transaction that read the row and ran
the write policy on it; every write appends to the ``audit`` table (which triggers keep
append-only) in the same transaction. :class:`SqliteStore` gives each worker thread its
own connection in WAL mode and runs every call in a thread, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread

from autoresearchd.errors import HubError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orgs (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    verified INTEGER NOT NULL DEFAULT 0,
    verification_code TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS memories (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    value TEXT NOT NULL,
    is_base64 INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts USING fts5(key_name, description, body);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    agent TEXT NOT NULL,
    action TEXT NOT NULL,
    key_name TEXT NOT NULL,
    version INTEGER,
    detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
"""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered agent; ``name`` is bound to its API key."""

    name: str
    is_admin: bool = False
    verified: bool = False


@dataclass(frozen=True, slots=True)
class Memory:
    """One stored key. ``value`` is exactly what was sent; ``is_base64`` says how to read it."""

    key_name: str
    owner: str
    description: str
    value: str
    is_base64: bool
    version: int
    created_at: float
    updated_at: float

    @property
    def text(self) -> str | None:
        """The value as text, or None when it is binary."""
        return decode_text(self.value, self.is_base64)


@dataclass(frozen=True, slots=True)
class NewMemory:
    key_name: str
    value: str
    is_base64: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    memory: Memory
    score: float


#: The write policy: given the stored row, why this write is refused, or None to allow it.
WritePolicy = Callable[[Memory], str | None]


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """``version`` is set on success; otherwise ``reason`` is one of the ``REASON_*`` names."""

    version: int | None = None
    reason: str = ""
    current_version: int | None = None
    detail: str = ""


REASON_NOT_FOUND = "not_found"
REASON_VERSION = "version_mismatch"
REASON_REFUSED = "refused"


class HubStore(Protocol):
    """What the hub needs from its database. This is a Protocol: implement, don't subclass."""

    async def create_org(self, name: str, now: float) -> bool: ...

    async def org_exists(self, name: str) -> bool: ...

    async def register(self, agent: Agent, key_hash: str, code: str, now: float) -> bool:
        """Store a new agent; False when the name or key is taken."""
        ...

    async def agent_for(self, key_hash: str) -> Agent | None: ...

    async def create(self, agent: str, item: NewMemory, now: float) -> int | None:
        """Create-if-absent; the new version, or None when the key exists."""
        ...

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        """The keys, read in one snapshot, in the order asked."""
        ...

    async def update(
        self,
        agent: str,
        item: NewMemory,
        if_match: int | None,
        policy: WritePolicy,
        now: float,
    ) -> UpdateOutcome:
        """Compare-and-set one key after ``policy`` allowed the write."""
        ...

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        """Keys under ``prefix`` in creation order, oldest first."""
        ...

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        """Keys under ``prefix`` ranked by text relevance; scores in [0, 1]."""
        ...

    async def close(self) -> None: ...


def decode_text(value: str, is_base64: bool) -> str | None:
    if not is_base64:
        return value
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


class SqliteStore:
    """The hub's data in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()  # guards the list of connections, not the data
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._translate(), _transaction(self._conn()) as conn:
            for statement in filter(str.strip, SCHEMA.split(";\n")):
                conn.execute(statement)
            if conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise HubError(f"{self.path}: database error: {exc}", status=503) from None

    async def _run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            with self._translate():
                return func(self._conn())

        return await anyio.to_thread.run_sync(work)

    async def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    async def create_org(self, name: str, now: float) -> bool:
        return await self._run(lambda c: _insert_org(c, name, now))

    async def org_exists(self, name: str) -> bool:
        row = await self._run(
            lambda c: c.execute("SELECT 1 FROM orgs WHERE name = ?", (name,)).fetchone()
        )
        return row is not None

    async def register(self, agent: Agent, key_hash: str, code: str, now: float) -> bool:
        return await self._run(lambda c: _insert_agent(c, agent, key_hash, code, now))

    async def agent_for(self, key_hash: str) -> Agent | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT name, is_admin, verified FROM agents WHERE key_hash = ?", (key_hash,)
            ).fetchone()
        )
        return Agent(row[0], bool(row[1]), bool(row[2])) if row else None

    async def create(self, agent: str, item: NewMemory, now: float) -> int | None:
        return await self._run(lambda c: _create(c, agent, item, now))

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        return await self._run(lambda c: _get(c, key_names))

    async def update(
        self,
        agent: str,
        item: NewMemory,
        if_match: int | None,
        policy: WritePolicy,
        now: float,
    ) -> UpdateOutcome:
        return await self._run(lambda c: _update(c, agent, item, if_match, policy, now))

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        return await self._run(lambda c: _list(c, prefix, limit))

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        return await self._run(lambda c: _search(c, query, prefix, limit))


# --- statements: each runs in a worker thread on that thread's connection -------------

COLUMNS = "key_name, owner, description, value, is_base64, version, created_at, updated_at"


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _row(row: tuple[Any, ...]) -> Memory:
    k, o, d, v, b, ver, c, u = row
    return Memory(str(k), str(o), str(d), str(v), bool(b), int(ver), float(c), float(u))


def _audit(
    conn: sqlite3.Connection, now: float, agent: str, action: str, key: str, version: int | None
) -> None:
    conn.execute(
        "INSERT INTO audit (at, agent, action, key_name, version, detail) VALUES (?,?,?,?,?,'')",
        (now, agent, action, key, version),
    )


def _insert_org(conn: sqlite3.Connection, name: str, now: float) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "INSERT INTO orgs (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, now)
        )
        if cur.rowcount:
            _audit(conn, now, "admin", "create_org", f"@{name}", None)
        return bool(cur.rowcount)


def _insert_agent(
    conn: sqlite3.Connection, agent: Agent, key_hash: str, code: str, now: float
) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "INSERT INTO agents (name, key_hash, is_admin, verified, verification_code,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (agent.name, key_hash, int(agent.is_admin), int(agent.verified), code, now),
        )
        if cur.rowcount:
            _audit(conn, now, agent.name, "register", "", None)
        return bool(cur.rowcount)


def _create(conn: sqlite3.Connection, agent: str, item: NewMemory, now: float) -> int | None:
    with _transaction(conn):
        cur = conn.execute(
            f"INSERT INTO memories ({COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
            " ON CONFLICT (key_name) DO NOTHING",
            (item.key_name, agent, item.description, item.value, int(item.is_base64), now, now),
        )
        if not cur.rowcount:
            return None
        body = decode_text(item.value, item.is_base64) or ""
        conn.execute(
            "INSERT INTO memories_fts (rowid, key_name, description, body) VALUES (?, ?, ?, ?)",
            (cur.lastrowid, item.key_name, item.description, body),
        )
        _audit(conn, now, agent, "create", item.key_name, 1)
        return 1


def _get(conn: sqlite3.Connection, key_names: Sequence[str]) -> list[Memory | None]:
    conn.execute("BEGIN")  # one snapshot for every key, so pairs read together agree
    try:
        found = {}
        for key in key_names:
            row = conn.execute(
                f"SELECT {COLUMNS} FROM memories WHERE key_name = ?", (key,)
            ).fetchone()
            if row:
                found[key] = _row(row)
    finally:
        conn.execute("COMMIT")
    return [found.get(key) for key in key_names]


def _update(
    conn: sqlite3.Connection,
    agent: str,
    item: NewMemory,
    if_match: int | None,
    policy: WritePolicy,
    now: float,
) -> UpdateOutcome:
    with _transaction(conn):
        row = conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE key_name = ?", (item.key_name,)
        ).fetchone()
        if row is None:
            return UpdateOutcome(reason=REASON_NOT_FOUND)
        current = _row(row)
        if if_match is not None and if_match != current.version:
            return UpdateOutcome(reason=REASON_VERSION, current_version=current.version)
        refusal = policy(current)
        if refusal:
            return UpdateOutcome(reason=REASON_REFUSED, detail=refusal)
        # The version in WHERE makes this a compare-and-set even where the read above
        # does not lock the row (PostgreSQL at READ COMMITTED).
        cur = conn.execute(
            "UPDATE memories SET value = ?, is_base64 = ?, version = version + 1,"
            " updated_at = ? WHERE key_name = ? AND version = ?",
            (item.value, int(item.is_base64), now, item.key_name, current.version),
        )
        if not cur.rowcount:
            return UpdateOutcome(reason=REASON_VERSION, current_version=current.version)
        body = decode_text(item.value, item.is_base64) or ""
        conn.execute(
            "UPDATE memories_fts SET body = ? WHERE rowid ="
            " (SELECT seq FROM memories WHERE key_name = ?)",
            (body, item.key_name),
        )
        _audit(conn, now, agent, "update", item.key_name, current.version + 1)
        return UpdateOutcome(version=current.version + 1)


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _list(conn: sqlite3.Connection, prefix: str, limit: int) -> list[Memory]:
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM memories WHERE key_name LIKE ? ESCAPE '\\' ORDER BY seq LIMIT ?",
        (_like_prefix(prefix), limit),
    ).fetchall()
    return [_row(row) for row in rows]


def _fts_query(query: str) -> str:
    """Quote each word so user text is never read as FTS5 syntax; any word may match."""
    words = [w.replace('"', '""') for w in query.split() if w.strip()]
    return " OR ".join(f'"{w}"' for w in words)


def _search(conn: sqlite3.Connection, query: str, prefix: str, limit: int) -> list[Hit]:
    match = _fts_query(query)
    if not match:
        return []
    rows = conn.execute(
        f"SELECT {', '.join('m.' + c.strip() for c in COLUMNS.split(','))},"
        " bm25(memories_fts) AS rank FROM memories_fts JOIN memories m ON m.seq ="
        " memories_fts.rowid WHERE memories_fts MATCH ? AND m.key_name LIKE ? ESCAPE '\\'"
        " ORDER BY rank LIMIT ?",
        (match, _like_prefix(prefix), limit),
    ).fetchall()
    return [Hit(_row(row[:8]), _score(row[8])) for row in rows]


def _score(rank: float) -> float:
    """bm25 is negative, lower is better: -r / (1 - r) maps it into [0, 1), higher is better."""
    return min(1.0, max(0.0, -rank / (1.0 - rank))) if rank < 0 else 0.0
