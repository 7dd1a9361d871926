"""The hub's storage: the :class:`HubStore` Protocol and its SQLite implementation.

Every guarantee the hub gives lives in the database, never in process memory, so the
PostgreSQL store (:mod:`autoresearchd.hub.pg`) implements the same Protocol and several
hub replicas can share one database; :mod:`autoresearchd.hub.store_auto` opens the store
a ``hub.database`` names, and the row types and column lists here serve both. In SQLite,
create-if-absent is one ``INSERT ... ON CONFLICT DO NOTHING``; compare-and-set
is one ``UPDATE ... WHERE version = ?`` inside the transaction that read the row, read
the :class:`Evidence` the write policy asked for (:class:`Needs`) and ran the policy on
them; every write appends to the ``audit`` table (which triggers keep append-only) in the
same transaction. A ``results/`` record is indexed in the ``results`` table in the
transaction that creates it (results are write-once), so a policy can count replicates
with one indexed ``SELECT``; the same transaction adds the result to its agent's row in
``standings``, which the dashboard's leaderboard reads. Verification is one
``UPDATE ... WHERE`` on the agent's code hash. :class:`SqliteStore` (WAL mode) writes on
one writer connection on the event loop, since a commit that does not wait for the disk
costs less than a hand-off to a thread (a write lock held by another process is waited for
in a thread instead); reads by key run inline too, while scans and searches, whose cost
grows with the data, run in worker threads with a connection each, and a serving hub
checkpoints the WAL in a thread. Several writes apply atomically as one :data:`Plan`.
Each process caches the agent of an API key (:mod:`~autoresearchd.hub.keycache`).
A value a database cannot hold (an integer past 64 bits, text that is not Unicode, NUL in
PostgreSQL text) fails the write with a 400 :class:`HubError` from :func:`unstorable`: the
request's fault, not an outage.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread

from autoresearchd.ensue import values
from autoresearchd.errors import HubError
from autoresearchd.hub.keycache import KeyCache

SCHEMA_VERSION = 3
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
    created_at REAL NOT NULL,
    email TEXT NOT NULL DEFAULT '',
    verified_at REAL
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
    updated_at REAL NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS results (
    key_name TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    agent TEXT NOT NULL,
    verified INTEGER NOT NULL,
    result_id TEXT NOT NULL,
    track TEXT NOT NULL,
    train_py_sha256 TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,
    provisional INTEGER NOT NULL,
    val_bpb REAL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_sha ON results (org, train_py_sha256);
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
CREATE INDEX IF NOT EXISTS audit_by_key ON audit (key_name, seq);
CREATE TABLE IF NOT EXISTS auth_epoch (n INTEGER NOT NULL);
INSERT INTO auth_epoch (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM auth_epoch);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END
"""

#: Columns later schemas added to tables schema 1 created: (table, column, declaration).
#: Schema 3 copies into ``results`` what the dashboard lists and filters on.
MIGRATIONS = (
    ("agents", "email", "TEXT NOT NULL DEFAULT ''"),
    ("agents", "verified_at", "REAL"),
    ("memories", "verified", "INTEGER NOT NULL DEFAULT 0"),
    ("results", "tier", "TEXT NOT NULL DEFAULT ''"),
    ("results", "proposer", "TEXT NOT NULL DEFAULT ''"),
    ("results", "description", "TEXT NOT NULL DEFAULT ''"),
    ("results", "duration_s", "REAL NOT NULL DEFAULT 0"),
    ("results", "parent_sha256", "TEXT NOT NULL DEFAULT ''"),
    ("results", "first_agent", "TEXT NOT NULL DEFAULT ''"),
)
#: The dashboard's indexes (schema 3): every page it serves reads one of them, newest first.
DASHBOARD_INDEXES = """
CREATE INDEX IF NOT EXISTS results_by_time ON results (org, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_agent ON results (org, agent, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_status ON results (org, status, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_tier ON results (org, tier, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_proposer ON results (org, proposer, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_track ON results (org, track, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_track_tier ON results
    (org, track, tier, created_at, key_name);
CREATE TABLE IF NOT EXISTS standings (
    org TEXT NOT NULL,
    agent TEXT NOT NULL,
    runs BIGINT NOT NULL,
    keeps BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    confirmations BIGINT NOT NULL,
    PRIMARY KEY (org, agent)
);
CREATE INDEX IF NOT EXISTS results_by_id ON results (org, result_id)
"""
#: Schema 3 fills what older rows lack: who first published each source, and the
#: standings (the tier and the other copied fields of older rows stay empty).
DASHBOARD_BACKFILL = """
UPDATE results SET first_agent = (SELECT f.agent FROM results f WHERE f.org = results.org
    AND f.train_py_sha256 = results.train_py_sha256 ORDER BY f.created_at, f.key_name LIMIT 1)
    WHERE first_agent = '';
INSERT INTO standings (org, agent, runs, keeps, seconds, confirmations)
    SELECT org, agent, count(*), sum(CASE WHEN status = 'keep' THEN 1 ELSE 0 END),
    sum(duration_s), sum(CASE WHEN val_bpb IS NOT NULL AND first_agent <> agent THEN 1 ELSE 0
    END) FROM results WHERE true GROUP BY org, agent
"""
#: Each indexed result adds itself to its agent's standing, in the same transaction, so the
#: leaderboard reads one row per agent however many results there are.
STANDING_UPSERT = (
    "INSERT INTO standings (org, agent, runs, keeps, seconds, confirmations)"
    " SELECT org, agent, 1, CASE WHEN status = 'keep' THEN 1 ELSE 0 END, duration_s,"
    " CASE WHEN val_bpb IS NOT NULL AND first_agent <> agent THEN 1 ELSE 0 END"
    " FROM results WHERE key_name = ?"
    " ON CONFLICT (org, agent) DO UPDATE SET runs = standings.runs + 1,"
    " keeps = standings.keeps + excluded.keeps, seconds = standings.seconds + excluded.seconds,"
    " confirmations = standings.confirmations + excluded.confirmations"
)
#: How much of a description the ``results`` index keeps; the record keeps all of it.
INDEXED_DESCRIPTION_CHARS = 300
#: The most rows one replication query returns; a source run more often is an outlier.
MAX_CONFIRMATIONS = 1000
#: Words of a search query beyond this many are ignored (by both stores).
MAX_QUERY_WORDS = 32
#: The URL schemes that select :class:`~autoresearchd.hub.pg.PostgresStore`.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered agent; ``name`` is bound to its API key."""

    name: str
    is_admin: bool = False
    verified: bool = False
    email: str = ""


@dataclass(frozen=True, slots=True)
class Memory:
    """One stored key. ``value`` is exactly what was sent; ``is_base64`` says how to read it.

    ``verified`` says whether its writer was a verified agent when it was created.
    """

    key_name: str
    owner: str
    description: str
    value: str
    is_base64: bool
    version: int
    created_at: float
    updated_at: float
    verified: bool = False

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


@dataclass(frozen=True, slots=True)
class ResultRow:
    """The indexed fields of one ``results/`` record; ``val_bpb`` is None unless finite."""

    key_name: str
    org: str
    agent: str
    verified: bool
    result_id: str
    track: str
    train_py_sha256: str
    seed: int | None
    status: str
    provisional: bool
    val_bpb: float | None
    #: Copied for the dashboard's lists and filters only; no write policy reads them.
    tier: str = ""
    proposer: str = ""
    description: str = ""
    duration_s: float = 0.0
    parent_sha256: str = ""

    def details(self) -> tuple[str, str, str, float, str]:
        """The values of :data:`DETAIL_COLUMNS`, in order."""
        description = self.description[:INDEXED_DESCRIPTION_CHARS]
        return (self.tier, self.proposer, description, self.duration_s, self.parent_sha256)


@dataclass(frozen=True, slots=True)
class Needs:
    """What a write policy must see besides the row it writes, read in the same transaction.

    ``result_key``: the indexed result at that key; ``replicates_of``: ``(org, sha256)``,
    every indexed result of that source; ``sibling_key``: another stored key.
    """

    result_key: str = ""
    replicates_of: tuple[str, str] | None = None
    sibling_key: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The rows :class:`Needs` asked for, as the write's transaction sees them."""

    result: ResultRow | None = None
    replicates: tuple[ResultRow, ...] = ()
    sibling: Memory | None = None


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """Why a write is refused (a reason) or None to allow it, given the stored row (None
    on create) and the evidence ``needs`` names. ``check`` must be pure."""

    check: Callable[[Memory | None, Evidence], str | None]
    needs: Needs = Needs()
    #: The writer becomes the key's owner: a claim taken over is the new holder's to release.
    takes_ownership: bool = False


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """``version`` is set on success; otherwise ``reason`` is one of the ``REASON_*`` names."""

    version: int | None = None
    reason: str = ""
    current_version: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who did what to which key, with the change's ``detail``."""

    at: float
    agent: str
    action: str
    key_name: str
    version: int | None
    detail: str


REASON_NOT_FOUND = "not_found"
REASON_EXISTS = "exists"
REASON_VERSION = "version_mismatch"
REASON_REFUSED = "refused"


class HubStore(Protocol):
    """What the hub needs from its database. This is a Protocol: implement, don't subclass."""

    async def create_org(self, name: str, now: float) -> bool: ...

    async def org_exists(self, name: str) -> bool: ...

    async def register(self, agent: Agent, key_hash: str, code_hash: str, now: float) -> bool:
        """Store a new agent (with ``agent.email``); False when the name or key is taken."""
        ...

    async def verify(self, name: str, code_hash: str, now: float) -> bool:
        """Mark ``name`` verified if ``code_hash`` is its code's hash; True if it now is."""
        ...

    async def forget(self, name: str, key_hash: str, now: float) -> bool:
        """Drop an agent that is still unverified (its email could not be sent)."""
        ...

    async def agent_for(self, key_hash: str) -> Agent | None: ...

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
        """Create-if-absent after ``policy`` allowed it; index ``result`` with it."""
        ...

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        """The keys, read in one snapshot, in the order asked."""
        ...

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
        """Compare-and-set one key after ``policy`` allowed the write."""
        ...

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        """Keys under ``prefix`` in creation order, oldest first."""
        ...

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        """Keys under ``prefix`` ranked by text relevance; scores in [0, 1]."""
        ...

    async def history(self, key_name: str, limit: int) -> list[AuditEntry]:
        """The audited creates and updates of one key, newest first."""
        ...

    async def delete(self, agent: Agent, key_name: str, now: float) -> bool:
        """Delete ``key_name`` if ``agent`` owns it (audited); False when it does not."""
        ...

    async def mark_verified(self, name: str, now: float) -> bool:
        """Verify agent ``name`` without its code (an invite vouches for it)."""
        ...

    async def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read-only query (``?`` placeholders), in one snapshot."""
        ...

    async def revoke(self, name: str, now: float) -> bool:
        """Make ``name``'s API key unusable, for every hub process on this database at
        once (PostgreSQL replicas: once notified); False when it has no live key."""
        ...

    async def transact(self, plan: Plan[T]) -> T:
        """Run ``plan``'s steps in one write transaction and return its result."""
        ...

    async def watch(self) -> None:
        """Keep what this store caches true while the hub serves (until cancelled); a
        store that needs nothing for it returns at once."""
        ...

    async def close(self) -> None: ...


def decode_text(value: str, is_base64: bool) -> str | None:
    """A stored value's text; None when it is binary."""
    return values.decode(value, is_base64)


#: Org-relative prefixes that search never needs to find: run and publish markers (one per
#: result, and most of a publish's writes) and the hub's own rows.
UNINDEXED = ("runs/", "published/", ".hub/")


def indexed(key_name: str) -> bool:
    """Whether search indexes ``key_name``: every record but the markers of ``UNINDEXED``."""
    return not key_name.partition("/")[2].startswith(UNINDEXED)


def search_text(item: NewMemory) -> str:
    """What search indexes of a value: its text, with NULs (which PostgreSQL text cannot
    hold, though a base64 value may decode to them) as spaces; binary values index nothing."""
    return (decode_text(item.value, item.is_base64) or "").replace("\x00", " ")


def unstorable(exc: Exception) -> HubError:
    """The 400 for a value a database cannot hold (an integer past 64 bits, text that is
    not Unicode): the request is at fault, so it must not read as an outage to retry."""
    problem = " ".join(str(exc).split())
    return HubError(f"cannot store the value: {problem}", status=400, code="unstorable")


def is_postgres_url(database: str | Path) -> bool:
    """Whether ``hub.database`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


#: How often a serving hub checkpoints the WAL (in a thread), and the pages at which
#: SQLite does it itself at a commit when no hub serves.
CHECKPOINT_EVERY_S = 2.0
AUTOCHECKPOINT_PAGES = 1000


class _Busy(Exception):
    """Another connection holds the database's write lock (SQLITE_BUSY)."""


class SqliteStore:
    """The hub's data in one SQLite file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()  # guards the list of connections, not the data
        self._writer: sqlite3.Connection | None = None  # never waits for the write lock
        self._patient: sqlite3.Connection | None = None  # waits for it, in a thread
        self._write_turn: anyio.CapacityLimiter | None = None
        self._checkpointing = False
        self._keys: KeyCache[Agent] = KeyCache()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = exc.strerror or str(exc)
            raise HubError(f"{self.path}: cannot create its folder: {problem}") from None
        with self._translate(), _transaction(self._conn()) as conn:
            _prepare(conn)

    def _connect(self, timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
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
    def _translate(self, *, busy: bool = False) -> Iterator[None]:
        """Database errors as HubErrors; with ``busy``, a write lock held elsewhere stays
        :class:`_Busy`, for the caller to wait for it in a thread."""
        try:
            yield
        except (UnicodeEncodeError, OverflowError) as exc:  # raised binding a parameter
            raise unstorable(exc) from None
        except _Busy:
            if busy:
                raise
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

    async def _write(self, func: Callable[[sqlite3.Connection], T]) -> T:
        """A write on the one writer connection, on the calling thread: with ``synchronous
        = NORMAL`` a WAL commit does not wait for the disk, so a write takes about as long
        as the hand-off to a thread would, and writes never queue on each other's locks.
        When another process holds the write lock, the write waits for it in a thread,
        one at a time, instead of blocking the event loop."""
        if self._writer is None:
            self._writer = self._connect(timeout_s=0.0)
        try:
            with self._translate(busy=True):
                return func(self._writer)
        except _Busy:
            pass
        if self._write_turn is None:
            self._write_turn = anyio.CapacityLimiter(1)

        def work() -> T:
            if self._patient is None:
                self._patient = self._connect()
            with self._translate():
                return func(self._patient)

        return await anyio.to_thread.run_sync(work, limiter=self._write_turn)

    async def watch(self) -> None:
        """Checkpoint the WAL in a worker thread while the hub serves, so that no commit on
        the event loop does it (and waits for the disk)."""
        self._checkpointing = True
        if self._writer is not None:
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            while True:
                await anyio.sleep(CHECKPOINT_EVERY_S)
                await anyio.to_thread.run_sync(self._checkpoint)
        finally:
            self._checkpointing = False
            if self._writer is not None:
                self._writer.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")

    def _checkpoint(self) -> None:
        with self._translate():
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        self._writer = self._patient = None
        for conn in conns:
            conn.close()

    async def create_org(self, name: str, now: float) -> bool:
        return await self._write(lambda c: _insert_org(c, name, now))

    async def org_exists(self, name: str) -> bool:
        row = self._read(
            lambda c: c.execute("SELECT 1 FROM orgs WHERE name = ?", (name,)).fetchone()
        )
        return row is not None

    async def register(self, agent: Agent, key_hash: str, code_hash: str, now: float) -> bool:
        return await self._write(lambda c: _insert_agent(c, agent, key_hash, code_hash, now))

    async def verify(self, name: str, code_hash: str, now: float) -> bool:
        return await self._write(lambda c: _verify(c, name, code_hash, now))

    async def forget(self, name: str, key_hash: str, now: float) -> bool:
        return await self._write(lambda c: _forget(c, name, key_hash, now))

    async def revoke(self, name: str, now: float) -> bool:
        return await self._write(lambda c: _revoke(c, name, now))

    async def agent_for(self, key_hash: str) -> Agent | None:
        return self._read(lambda c: _agent_for(c, key_hash, self._keys))

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
            lambda c: _create(c, Write(agent, item, now, policy, result, detail))
        )

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        return self._read(lambda c: _get(c, key_names))

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
        write = Write(agent, item, now, policy, None, detail)
        return await self._write(lambda c: _update(c, write, if_match))

    async def transact(self, plan: Plan[T]) -> T:
        return await self._write(lambda c: _transact(c, plan))

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        return await self._run(lambda c: _list(c, prefix, limit))

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        return await self._run(lambda c: _search(c, query, prefix, limit))

    async def history(self, key_name: str, limit: int) -> list[AuditEntry]:
        return await self._run(lambda c: _history(c, key_name, limit))

    async def delete(self, agent: Agent, key_name: str, now: float) -> bool:
        return await self._write(lambda c: _delete(c, agent.name, key_name, now))

    async def mark_verified(self, name: str, now: float) -> bool:
        return await self._write(lambda c: _mark_verified(c, name, now))

    async def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._run(lambda c: _select(c, sql, params))


# --- statements: each runs in a worker thread on that thread's connection -------------

COLUMNS = (
    "key_name, owner, description, value, is_base64, version, created_at, updated_at, verified"
)
RESULT_COLUMNS = (
    "key_name, org, agent, verified, result_id, track, train_py_sha256, seed, status,"
    " provisional, val_bpb"
)
#: The columns of ``results`` only the dashboard reads (:meth:`ResultRow.details`).
DETAIL_COLUMNS = "tier, proposer, description, duration_s, parent_sha256"
#: The agent who first published a result's source (credit goes to them), found as the
#: row is inserted; parameters: org, train_py_sha256, and the writer (when it is first).
FIRST_AGENT = (
    "coalesce((SELECT f.agent FROM results f WHERE f.org = ? AND f.train_py_sha256 = ?"
    " ORDER BY f.created_at, f.key_name LIMIT 1), ?)"
)


@dataclass(frozen=True, slots=True)
class Write:
    """One create or update as both stores receive it."""

    agent: Agent
    item: NewMemory
    now: float
    policy: WritePolicy | None
    result: ResultRow | None
    detail: str


@dataclass(frozen=True, slots=True)
class ReadKeys:
    """A step of a :data:`Plan`: the stored rows of ``key_names`` (None where absent), in
    order; ``lock`` holds them until the plan's transaction ends (PostgreSQL's ``FOR
    UPDATE``; in SQLite the plan holds the database's one write lock anyway)."""

    key_names: tuple[str, ...]
    lock: bool = False


@dataclass(frozen=True, slots=True)
class CreateKey:
    """A step of a :data:`Plan`: create-if-absent under ``write.policy``; a WriteOutcome."""

    write: Write


@dataclass(frozen=True, slots=True)
class UpdateKey:
    """A step of a :data:`Plan`: compare-and-set under ``write.policy``; a WriteOutcome."""

    write: Write
    if_match: int | None


Step = ReadKeys | CreateKey | UpdateKey
#: Several reads and writes applied in one transaction: a generator that yields each
#: :data:`Step` and is sent its answer (a list of Memory | None for a read, a WriteOutcome
#: for a write); what it returns is the plan's result. Plans hold no I/O of their own, so
#: both stores run the same plan, SQLite on its writer thread and PostgreSQL on the loop.
Plan = Generator[Step, Any, T]


def _prepare(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a schema 1 database up to date."""
    for statement in filter(str.strip, SCHEMA.split(";\n")):
        conn.execute(statement)
    for table, column, declaration in MIGRATIONS:
        known = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in known:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    for statement in filter(str.strip, DASHBOARD_INDEXES.split(";\n")):
        conn.execute(statement)
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    if row[0] is not None and row[0] < 3:
        for statement in filter(str.strip, DASHBOARD_BACKFILL.split(";\n")):
            conn.execute(statement)
    if row[0] is None:
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif row[0] < SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    nested = conn.in_transaction  # a step of a plan: the plan's transaction holds it
    if nested:
        yield conn
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            raise _Busy from None  # nothing was done: the write may run again elsewhere
        raise
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def memory_of(row: Sequence[Any]) -> Memory:
    """A :class:`Memory` from a row of :data:`COLUMNS`, in either database."""
    k, o, d, v, b, ver, c, u, ok = row
    return Memory(str(k), str(o), str(d), str(v), bool(b), int(ver), float(c), float(u), bool(ok))


def result_of(row: Sequence[Any]) -> ResultRow:
    """A :class:`ResultRow` from a row of :data:`RESULT_COLUMNS`, in either database."""
    k, org, agent, ok, rid, track, sha, seed, status, prov, bpb = row
    return ResultRow(
        str(k),
        str(org),
        str(agent),
        bool(ok),
        str(rid),
        str(track),
        str(sha),
        None if seed is None else int(seed),
        str(status),
        bool(prov),
        None if bpb is None else float(bpb),
    )


def _audit(
    conn: sqlite3.Connection,
    now: float,
    agent: str,
    action: str,
    key: str,
    version: int | None,
    detail: str = "",
) -> None:
    conn.execute(
        "INSERT INTO audit (at, agent, action, key_name, version, detail) VALUES (?,?,?,?,?,?)",
        (now, agent, action, key, version, detail),
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
    conn: sqlite3.Connection, agent: Agent, key_hash: str, code_hash: str, now: float
) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "INSERT INTO agents (name, key_hash, is_admin, verified, verification_code,"
            " created_at, email, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (
                agent.name,
                key_hash,
                int(agent.is_admin),
                int(agent.verified),
                code_hash,
                now,
                agent.email,
                now if agent.verified else None,
            ),
        )
        if cur.rowcount:
            _audit(conn, now, agent.name, "register", "", None)
        return bool(cur.rowcount)


def _agents_changed(conn: sqlite3.Connection) -> None:
    """Tell every process's key cache, through the database, that an agent changed."""
    conn.execute("UPDATE auth_epoch SET n = n + 1")


def _agent_for(conn: sqlite3.Connection, key_hash: str, cache: KeyCache[Agent]) -> Agent | None:
    # The marker first: a change committed between the two reads empties the cache on the
    # next lookup, so what the second read saw cannot outlive it.
    row = conn.execute("SELECT n FROM auth_epoch").fetchone()
    cache.seen(row[0] if row else None)
    hit = cache.get(key_hash)
    if hit is not None:
        return hit
    generation = cache.generation
    row = conn.execute(
        "SELECT name, is_admin, verified, email FROM agents WHERE key_hash = ?", (key_hash,)
    ).fetchone()
    if row is None:
        return None
    agent = Agent(row[0], bool(row[1]), bool(row[2]), str(row[3]))
    cache.put(key_hash, agent, generation)
    return agent


def revoked_key_hash() -> str:
    """What replaces a revoked key's hash: no sha256 hex digest, so no key matches it."""
    return f"revoked:{secrets.token_hex(16)}"


def _revoke(conn: sqlite3.Connection, name: str, now: float) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "UPDATE agents SET key_hash = ? WHERE name = ? AND key_hash NOT LIKE 'revoked:%'",
            (revoked_key_hash(), name),
        )
        if cur.rowcount:
            _agents_changed(conn)
            _audit(conn, now, name, "revoke", "", None)
        return bool(cur.rowcount)


def _verify(conn: sqlite3.Connection, name: str, code_hash: str, now: float) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "UPDATE agents SET verified = 1, verified_at = ?"
            " WHERE name = ? AND verification_code = ? AND verified = 0",
            (now, name, code_hash),
        )
        if cur.rowcount:
            _agents_changed(conn)
            _audit(conn, now, name, "verify", "", None)
            return True
        row = conn.execute(
            "SELECT 1 FROM agents WHERE name = ? AND verification_code = ? AND verified = 1",
            (name, code_hash),
        ).fetchone()
        return row is not None  # opening the link twice is fine


def _forget(conn: sqlite3.Connection, name: str, key_hash: str, now: float) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "DELETE FROM agents WHERE name = ? AND key_hash = ? AND verified = 0",
            (name, key_hash),
        )
        if cur.rowcount:
            _agents_changed(conn)
            _audit(conn, now, name, "forget", "", None)
        return bool(cur.rowcount)


def _delete(conn: sqlite3.Connection, agent: str, key_name: str, now: float) -> bool:
    with _transaction(conn):
        row = conn.execute(
            "SELECT seq FROM memories WHERE key_name = ? AND owner = ?", (key_name, agent)
        ).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM memories_fts WHERE rowid = ?", (row[0],))
        conn.execute("DELETE FROM memories WHERE seq = ?", (row[0],))
        _audit(conn, now, agent, "delete", key_name, None)
        return True


def _mark_verified(conn: sqlite3.Connection, name: str, now: float) -> bool:
    with _transaction(conn):
        cur = conn.execute(
            "UPDATE agents SET verified = 1, verified_at = ? WHERE name = ? AND verified = 0",
            (now, name),
        )
        if cur.rowcount:
            _agents_changed(conn)  # a cached unverified agent must not outlive the invite
            _audit(conn, now, name, "verify", "", None)
        return bool(cur.rowcount)


def _evidence(conn: sqlite3.Connection, needs: Needs) -> Evidence:
    result = replicates = sibling = None
    if needs.result_key:
        row = conn.execute(
            f"SELECT {RESULT_COLUMNS} FROM results WHERE key_name = ?", (needs.result_key,)
        ).fetchone()
        result = result_of(row) if row else None
    if needs.replicates_of is not None:
        rows = conn.execute(
            f"SELECT {RESULT_COLUMNS} FROM results WHERE org = ? AND train_py_sha256 = ?"
            " ORDER BY created_at, key_name LIMIT ?",
            (*needs.replicates_of, MAX_CONFIRMATIONS),
        ).fetchall()
        replicates = tuple(result_of(row) for row in rows)
    if needs.sibling_key:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE key_name = ?", (needs.sibling_key,)
        ).fetchone()
        sibling = memory_of(row) if row else None
    return Evidence(result, replicates or (), sibling)


def _refusal(
    conn: sqlite3.Connection, policy: WritePolicy | None, current: Memory | None
) -> str | None:
    if policy is None:
        return None
    return policy.check(current, _evidence(conn, policy.needs))


def _create(conn: sqlite3.Connection, write: Write) -> WriteOutcome:
    item, agent, now = write.item, write.agent, write.now
    with _transaction(conn):
        exists = conn.execute(
            "SELECT version FROM memories WHERE key_name = ?", (item.key_name,)
        ).fetchone()
        if exists:
            return WriteOutcome(reason=REASON_EXISTS, current_version=int(exists[0]))
        refusal = _refusal(conn, write.policy, None)
        if refusal:
            return WriteOutcome(reason=REASON_REFUSED, detail=refusal)
        cur = conn.execute(
            f"INSERT INTO memories ({COLUMNS}) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)"
            " ON CONFLICT (key_name) DO NOTHING",
            (
                item.key_name,
                agent.name,
                item.description,
                item.value,
                int(item.is_base64),
                now,
                now,
                int(agent.verified),
            ),
        )
        if not cur.rowcount:  # a writer that does not lock on read got there first
            return WriteOutcome(reason=REASON_EXISTS, current_version=1)
        if indexed(item.key_name):
            conn.execute(
                "INSERT INTO memories_fts (rowid, key_name, description, body) VALUES (?, ?, ?, ?)",
                (cur.lastrowid, item.key_name, item.description, search_text(item)),
            )
        if write.result is not None:
            _index_result(conn, write.result, now)
        _audit(conn, now, agent.name, "create", item.key_name, 1, write.detail)
        return WriteOutcome(version=1)


def _index_result(conn: sqlite3.Connection, row: ResultRow, now: float) -> None:
    conn.execute(
        f"INSERT INTO results ({RESULT_COLUMNS}, created_at, {DETAIL_COLUMNS}, first_agent)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {FIRST_AGENT})",
        (
            row.key_name,
            row.org,
            row.agent,
            int(row.verified),
            row.result_id,
            row.track,
            row.train_py_sha256,
            row.seed,
            row.status,
            int(row.provisional),
            row.val_bpb,
            now,
            *row.details(),
            row.org,
            row.train_py_sha256,
            row.agent,
        ),
    )
    conn.execute(STANDING_UPSERT, (row.key_name,))


def _get(conn: sqlite3.Connection, key_names: Sequence[str]) -> list[Memory | None]:
    conn.execute("BEGIN")  # one snapshot for every key, so pairs read together agree
    try:
        return _get_in(conn, key_names)
    finally:
        conn.execute("COMMIT")


def _get_in(conn: sqlite3.Connection, key_names: Sequence[str]) -> list[Memory | None]:
    found = {}
    for key in key_names:
        row = conn.execute(f"SELECT {COLUMNS} FROM memories WHERE key_name = ?", (key,)).fetchone()
        if row:
            found[key] = memory_of(row)
    return [found.get(key) for key in key_names]


def _transact(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    with _transaction(conn):
        answer: Any = None
        try:
            while True:
                step = plan.send(answer)
                if isinstance(step, ReadKeys):
                    answer = _get_in(conn, step.key_names)
                elif isinstance(step, CreateKey):
                    answer = _create(conn, step.write)
                else:
                    answer = _update(conn, step.write, step.if_match)
        except StopIteration as done:
            result: T = done.value
            return result


def _update(conn: sqlite3.Connection, write: Write, if_match: int | None) -> WriteOutcome:
    item, now = write.item, write.now
    with _transaction(conn):
        row = conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE key_name = ?", (item.key_name,)
        ).fetchone()
        if row is None:
            return WriteOutcome(reason=REASON_NOT_FOUND)
        current = memory_of(row)
        if if_match is not None and if_match != current.version:
            return WriteOutcome(reason=REASON_VERSION, current_version=current.version)
        refusal = _refusal(conn, write.policy, current)
        if refusal:
            return WriteOutcome(reason=REASON_REFUSED, detail=refusal)
        # The version in WHERE makes this a compare-and-set even where the read above
        # does not lock the row (PostgreSQL at READ COMMITTED).
        cur = conn.execute(
            "UPDATE memories SET value = ?, is_base64 = ?, version = version + 1,"
            " updated_at = ?, owner = ? WHERE key_name = ? AND version = ?",
            (
                item.value,
                int(item.is_base64),
                now,
                new_owner(write, current),
                item.key_name,
                current.version,
            ),
        )
        if not cur.rowcount:
            return WriteOutcome(reason=REASON_VERSION, current_version=current.version)
        if indexed(item.key_name):
            conn.execute(
                "UPDATE memories_fts SET body = ? WHERE rowid ="
                " (SELECT seq FROM memories WHERE key_name = ?)",
                (search_text(item), item.key_name),
            )
        version = current.version + 1
        _audit(conn, now, write.agent.name, "update", item.key_name, version, write.detail)
        return WriteOutcome(version=version)


def new_owner(write: Write, current: Memory) -> str:
    """The owner after ``write`` updates ``current``."""
    takes = write.policy is not None and write.policy.takes_ownership
    return write.agent.name if takes else current.owner


def _history(conn: sqlite3.Connection, key_name: str, limit: int) -> list[AuditEntry]:
    rows = conn.execute(
        "SELECT at, agent, action, key_name, version, detail FROM audit"
        " WHERE key_name = ? AND action IN ('create', 'update') ORDER BY seq DESC LIMIT ?",
        (key_name, limit),
    ).fetchall()
    return [AuditEntry(float(a), str(g), str(c), str(k), v, str(d)) for a, g, c, k, v, d in rows]


def _select(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
        raise HubError("select runs SELECT statements only")
    conn.execute("BEGIN")  # one snapshot, so a page and its counts agree
    try:
        return [tuple(row) for row in conn.execute(sql, tuple(params)).fetchall()]
    finally:
        conn.execute("COMMIT")


def like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _list(conn: sqlite3.Connection, prefix: str, limit: int) -> list[Memory]:
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM memories WHERE key_name LIKE ? ESCAPE '\\' ORDER BY seq LIMIT ?",
        (like_prefix(prefix), limit),
    ).fetchall()
    return [memory_of(row) for row in rows]


def _fts_query(query: str) -> str:
    """Quote each word so user text is never read as FTS5 syntax; any word may match.

    Words past :data:`MAX_QUERY_WORDS` are ignored, as in PostgreSQL: a query of 100,000
    words held a thread for seconds.
    """
    words = [w.replace('"', '""') for w in query.split()[:MAX_QUERY_WORDS]]
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
        (match, like_prefix(prefix), limit),
    ).fetchall()
    return [Hit(memory_of(row[:9]), _score(row[9])) for row in rows]


def _score(rank: float) -> float:
    """bm25 is negative, lower is better: -r / (1 - r) maps it into [0, 1), higher is better."""
    return min(1.0, max(0.0, -rank / (1.0 - rank))) if rank < 0 else 0.0
