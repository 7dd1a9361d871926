"""The hub's data in PostgreSQL: :class:`PostgresStore` and its versioned migrations.

Any number of hub replicas may share one database, because every guarantee of the
:class:`~autoresearchd.hub.store.HubStore` Protocol is kept by PostgreSQL itself, never
by a lock in one process. Create-if-absent is ``INSERT ... ON CONFLICT DO NOTHING`` (a
second writer waits on the unique index, then inserts nothing). An update reads its row
``FOR UPDATE``, so writers of one key queue on the row lock and each runs its write
policy on the row as the previous writer committed it; the ``UPDATE ... WHERE version =``
that follows is the compare-and-set. A best's source reads its metadata ``FOR SHARE``,
so the metadata cannot move while a source that matched it is written. Results are
write-once rows, so a replication count can only grow under a policy's feet, never
shrink. Every write appends to ``audit`` in its own transaction, and a trigger refuses
any ``UPDATE``, ``DELETE`` or ``TRUNCATE`` of it. Search ranks a ``tsvector`` of the key,
description and text with ``ts_rank`` normalised into [0, 1). Schema changes are the
numbered :data:`MIGRATIONS`, applied under an advisory lock by :func:`migrate_database` (``hub
migrate``); a store refuses to open a database whose schema is not the current one.
A read is one autocommit statement (one snapshot, no ``BEGIN``/``COMMIT`` round trips).
The only thing held in process memory is the agent of each API key seen
(:mod:`~autoresearchd.hub.keycache`), and only while :meth:`PostgresStore.watch` listens on
:data:`AGENTS_CHANNEL`, which every change of an agent notifies in its own transaction.
Each replica keeps a pool of up to ``hub.pool_size`` connections (:data:`POOL_SIZE`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar

import anyio
import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from autoresearchd.errors import HubError
from autoresearchd.hub.keycache import KeyCache
from autoresearchd.hub.store import (
    COLUMNS,
    DASHBOARD_BACKFILL,
    DASHBOARD_INDEXES,
    DETAIL_COLUMNS,
    FIRST_AGENT,
    MAX_CONFIRMATIONS,
    MAX_QUERY_WORDS,
    REASON_EXISTS,
    REASON_NOT_FOUND,
    REASON_REFUSED,
    REASON_VERSION,
    RESULT_COLUMNS,
    STANDING_UPSERT,
    Agent,
    AuditEntry,
    CreateKey,
    Evidence,
    Hit,
    Memory,
    Needs,
    NewMemory,
    Plan,
    ReadKeys,
    ResultRow,
    Write,
    WriteOutcome,
    WritePolicy,
    indexed,
    like_prefix,
    memory_of,
    new_owner,
    result_of,
    revoked_key_hash,
    search_text,
    unstorable,
)

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

log = structlog.get_logger(__name__)
T = TypeVar("T")

POOL_SIZE = 10
CONNECT_TIMEOUT_S = 30.0
#: The channel a change of an agent (verified, forgotten, revoked) notifies on commit.
AGENTS_CHANNEL = "autoresearchd_agents"
#: How long :meth:`PostgresStore.watch` waits before listening again after losing its link.
WATCH_RETRY_S = 1.0
#: The advisory lock :func:`migrate_database` holds, so replicas starting together migrate once.
MIGRATION_LOCK = 0x6875625F6D6967  # "hub_mig"

SCHEMA_1 = """
CREATE TABLE orgs (name TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    is_admin BOOLEAN NOT NULL DEFAULT false,
    verified BOOLEAN NOT NULL DEFAULT false,
    verification_code TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    email TEXT NOT NULL DEFAULT '',
    verified_at DOUBLE PRECISION
);
CREATE TABLE memories (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    description TEXT NOT NULL,
    value TEXT NOT NULL,
    is_base64 BOOLEAN NOT NULL,
    version INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    verified BOOLEAN NOT NULL DEFAULT false,
    document TSVECTOR NOT NULL
);
CREATE INDEX memories_by_prefix ON memories (key_name text_pattern_ops);
CREATE INDEX memories_by_words ON memories USING GIN (document);
CREATE TABLE results (
    key_name TEXT PRIMARY KEY,
    org TEXT NOT NULL,
    agent TEXT NOT NULL,
    verified BOOLEAN NOT NULL,
    result_id TEXT NOT NULL,
    track TEXT NOT NULL,
    train_py_sha256 TEXT NOT NULL,
    seed BIGINT,
    status TEXT NOT NULL,
    provisional BOOLEAN NOT NULL,
    val_bpb DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX results_by_sha ON results (org, train_py_sha256);
CREATE TABLE audit (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    agent TEXT NOT NULL,
    action TEXT NOT NULL,
    key_name TEXT NOT NULL,
    version INTEGER,
    detail TEXT NOT NULL
);
CREATE INDEX audit_by_key ON audit (key_name, seq);
CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit log is append-only'; END
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only();
"""

SCHEMA_2 = (
    """
ALTER TABLE results ADD COLUMN tier TEXT NOT NULL DEFAULT '',
    ADD COLUMN proposer TEXT NOT NULL DEFAULT '',
    ADD COLUMN description TEXT NOT NULL DEFAULT '',
    ADD COLUMN duration_s DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN parent_sha256 TEXT NOT NULL DEFAULT '',
    ADD COLUMN first_agent TEXT NOT NULL DEFAULT '';
"""
    + DASHBOARD_INDEXES.replace(" IF NOT EXISTS", "")
    + ";\n"
    + DASHBOARD_BACKFILL
)

#: ``(version, what it does, SQL)``, applied in order, each once, in one transaction.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "orgs, agents, memories, results and the append-only audit log", SCHEMA_1),
    (2, "the dashboard's result columns and indexes", SCHEMA_2),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _unavailable(exc: psycopg.Error) -> HubError:
    # Never the URL: it may carry a password.
    problem = " ".join(str(exc).split())
    return HubError(f"PostgreSQL: database error: {problem}", status=503)


async def migrate_database(url: str) -> tuple[int, int]:
    """Apply the pending :data:`MIGRATIONS`; the schema version before and after."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
        ) as conn:
            return await _migrate(conn)
    except psycopg.Error as exc:
        raise _unavailable(exc) from None


async def _migrate(conn: Conn) -> tuple[int, int]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
            " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        before = await _schema_version(conn)
        if before > SCHEMA_VERSION:
            raise HubError(f"the database is at schema {before}, newer than {SCHEMA_VERSION}")
        for version, description, sql in MIGRATIONS:
            if version > before:
                await conn.execute(sql)  # no parameters, so several statements may run at once
                await conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                    (version, description),
                )
        return before, SCHEMA_VERSION


async def _schema_version(conn: Conn) -> int:
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    exists = await cur.fetchone()
    if not exists or not exists[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class PostgresStore:
    """The hub's data in one PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, pool: AsyncConnectionPool[Conn]) -> None:
        self.url = url
        self._pool = pool
        # Off until watch() listens: without the notifications an entry could outlive a revoke.
        self._keys: KeyCache[Agent] = KeyCache(enabled=False)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = False, pool_size: int = POOL_SIZE) -> Self:
        """Connect; with ``migrate``, apply pending migrations first. A database whose
        schema is not :data:`SCHEMA_VERSION` is refused with a HubError."""
        if migrate:
            await migrate_database(url)
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            timeout=CONNECT_TIMEOUT_S,
            open=False,
        )
        store = cls(url, pool)
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            await store._check_schema()
        except psycopg.Error as exc:
            await pool.close()
            raise _unavailable(exc) from None
        except HubError:
            await pool.close()
            raise
        return store

    async def _check_schema(self) -> None:
        async with self._pool.connection() as conn:
            version = await _schema_version(conn)
        if version != SCHEMA_VERSION:
            raise HubError(
                f"the database is at schema {version}, this hub needs {SCHEMA_VERSION}:"
                " run `autoresearchd hub migrate --config <file>`"
            )

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Conn]:
        """A pooled connection inside one READ COMMITTED transaction."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.DataError, UnicodeEncodeError) as exc:
            raise unstorable(exc) from None
        except psycopg.Error as exc:
            raise _unavailable(exc) from None

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[Conn]:
        """A pooled connection for one autocommit statement: one snapshot, one round trip."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.DataError, UnicodeEncodeError) as exc:
            raise unstorable(exc) from None
        except psycopg.Error as exc:
            raise _unavailable(exc) from None

    async def _one(self, sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
        async with self._statement() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def _all(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._statement() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    async def watch(self) -> None:
        """Keep the key cache on while listening for changes of agents; runs until cancelled.

        A lost link turns the cache off (and empties it) until listening again, so a
        revoke is never missed, only looked up in the database meanwhile.
        """
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
                ) as conn:
                    await conn.execute(f"LISTEN {AGENTS_CHANNEL}")
                    self._keys.clear()
                    self._keys.enabled = True
                    async for _ in conn.notifies():
                        self._keys.clear()
            except psycopg.Error as exc:
                log.warning("hub_key_cache_off", error=str(exc), retry_s=WATCH_RETRY_S)
            finally:
                self._keys.enabled = False
                self._keys.clear()
            await anyio.sleep(WATCH_RETRY_S)

    async def create_org(self, name: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO orgs (name, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (name, now),
            )
            if cur.rowcount:
                await _audit(conn, now, "admin", "create_org", f"@{name}", None)
            return bool(cur.rowcount)

    async def org_exists(self, name: str) -> bool:
        return await self._one("SELECT 1 FROM orgs WHERE name = %s", (name,)) is not None

    async def register(self, agent: Agent, key_hash: str, code_hash: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO agents (name, key_hash, is_admin, verified, verification_code,"
                " created_at, email, verified_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (
                    agent.name,
                    key_hash,
                    agent.is_admin,
                    agent.verified,
                    code_hash,
                    now,
                    agent.email,
                    now if agent.verified else None,
                ),
            )
            if cur.rowcount:
                await _audit(conn, now, agent.name, "register", "", None)
            return bool(cur.rowcount)

    async def verify(self, name: str, code_hash: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "UPDATE agents SET verified = true, verified_at = %s"
                " WHERE name = %s AND verification_code = %s AND NOT verified",
                (now, name, code_hash),
            )
            if cur.rowcount:
                await _agents_changed(conn)
                await _audit(conn, now, name, "verify", "", None)
                return True
            cur = await conn.execute(
                "SELECT 1 FROM agents WHERE name = %s AND verification_code = %s AND verified",
                (name, code_hash),
            )
            return await cur.fetchone() is not None  # opening the link twice is fine

    async def forget(self, name: str, key_hash: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM agents WHERE name = %s AND key_hash = %s AND NOT verified",
                (name, key_hash),
            )
            if cur.rowcount:
                await _agents_changed(conn)
                await _audit(conn, now, name, "forget", "", None)
            return bool(cur.rowcount)

    async def revoke(self, name: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "UPDATE agents SET key_hash = %s WHERE name = %s"
                " AND key_hash NOT LIKE 'revoked:%%'",
                (revoked_key_hash(), name),
            )
            if cur.rowcount:
                await _agents_changed(conn)
                await _audit(conn, now, name, "revoke", "", None)
            changed = bool(cur.rowcount)
        if changed:
            self._keys.clear()  # this replica at once; the others when notified
        return changed

    async def agent_for(self, key_hash: str) -> Agent | None:
        hit = self._keys.get(key_hash)
        if hit is not None:
            return hit
        generation = self._keys.generation
        row = await self._one(
            "SELECT name, is_admin, verified, email FROM agents WHERE key_hash = %s",
            (key_hash,),
        )
        if row is None:
            return None
        agent = Agent(str(row[0]), bool(row[1]), bool(row[2]), str(row[3]))
        self._keys.put(key_hash, agent, generation)
        return agent

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
        async with self._transaction() as conn:
            return await _create(conn, Write(agent, item, now, policy, result, detail))

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        # One statement reads every key from one snapshot, so pairs read together agree.
        rows = await self._all(
            f"SELECT {COLUMNS} FROM memories WHERE key_name = ANY(%s)", (list(key_names),)
        )
        found = {memory.key_name: memory for memory in map(memory_of, rows)}
        return [found.get(key) for key in key_names]

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
        async with self._transaction() as conn:
            return await _update(conn, Write(agent, item, now, policy, None, detail), if_match)

    async def transact(self, plan: Plan[T]) -> T:
        async with self._transaction() as conn:
            answer: Any = None
            try:
                while True:
                    step = plan.send(answer)
                    if isinstance(step, ReadKeys):
                        answer = await _read_keys(conn, step)
                    elif isinstance(step, CreateKey):
                        answer = await _create(conn, step.write)
                    else:
                        answer = await _update(conn, step.write, step.if_match)
            except StopIteration as done:
                result: T = done.value
                return result

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        rows = await self._all(
            f"SELECT {COLUMNS} FROM memories WHERE key_name LIKE %s ESCAPE '\\'"
            " ORDER BY seq LIMIT %s",
            (like_prefix(prefix), limit),
        )
        return [memory_of(row) for row in rows]

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        words = query.split()[:MAX_QUERY_WORDS]
        if not words:
            return []
        # Any word may match: the OR of one plain query per word, so no user text is
        # ever read as tsquery syntax. Normalisation 32 maps a rank r to r / (r + 1).
        tsquery = " || ".join(["plainto_tsquery('simple', %s)"] * len(words))
        rows = await self._all(
            f"SELECT {COLUMNS}, ts_rank(document, q, 32) AS rank"
            f" FROM memories, (SELECT {tsquery} AS q) AS query"
            " WHERE numnode(q) > 0 AND document @@ q AND key_name LIKE %s ESCAPE '\\'"
            " ORDER BY rank DESC, seq LIMIT %s",
            (*words, like_prefix(prefix), limit),
        )
        return [Hit(memory_of(row[:9]), min(1.0, max(0.0, float(row[9])))) for row in rows]

    async def history(self, key_name: str, limit: int) -> list[AuditEntry]:
        rows = await self._all(
            "SELECT at, agent, action, key_name, version, detail FROM audit"
            " WHERE key_name = %s AND action IN ('create', 'update') ORDER BY seq DESC LIMIT %s",
            (key_name, limit),
        )
        return [
            AuditEntry(float(a), str(g), str(c), str(k), v, str(d)) for a, g, c, k, v, d in rows
        ]

    async def delete(self, agent: Agent, key_name: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM memories WHERE key_name = %s AND owner = %s", (key_name, agent.name)
            )
            if cur.rowcount:
                await _audit(conn, now, agent.name, "delete", key_name, None)
            return bool(cur.rowcount)

    async def mark_verified(self, name: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "UPDATE agents SET verified = true, verified_at = %s"
                " WHERE name = %s AND NOT verified",
                (now, name),
            )
            if cur.rowcount:
                await _agents_changed(conn)  # a cached unverified agent must not outlive it
                await _audit(conn, now, name, "verify", "", None)
            return bool(cur.rowcount)

    async def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # One statement sees one snapshot. The queries carry no literal ``%`` or ``?``:
        # every pattern travels as a parameter, so the placeholders translate one for one.
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise HubError("select runs SELECT statements only")
        return await self._all(sql.replace("?", "%s"), params)


# --- statements: each runs inside the caller's transaction -------------------------------

DOCUMENT = "to_tsvector('simple', %s || ' ' || %s || ' ' || %s)"


def _document(item: NewMemory, description: str) -> tuple[str, str, str]:
    """The key, description and text :data:`DOCUMENT` indexes; nothing for a marker."""
    if not indexed(item.key_name):
        return "", "", ""
    return item.key_name, description, search_text(item)


async def _audit(
    conn: Conn,
    now: float,
    agent: str,
    action: str,
    key: str,
    version: int | None,
    detail: str = "",
) -> None:
    await conn.execute(
        "INSERT INTO audit (at, agent, action, key_name, version, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (now, agent, action, key, version, detail),
    )


async def _agents_changed(conn: Conn) -> None:
    """Tell every replica's key cache, on commit, that an agent changed."""
    await conn.execute(f"NOTIFY {AGENTS_CHANNEL}")


async def _read_keys(conn: Conn, step: ReadKeys) -> list[Memory | None]:
    lock = " ORDER BY key_name FOR UPDATE" if step.lock else ""  # in one order: no deadlock
    cur = await conn.execute(
        f"SELECT {COLUMNS} FROM memories WHERE key_name = ANY(%s){lock}", (list(step.key_names),)
    )
    found = {memory.key_name: memory for memory in map(memory_of, await cur.fetchall())}
    return [found.get(key) for key in step.key_names]


async def _evidence(conn: Conn, needs: Needs) -> Evidence:
    result = sibling = None
    replicates: tuple[ResultRow, ...] = ()
    if needs.result_key:
        cur = await conn.execute(
            f"SELECT {RESULT_COLUMNS} FROM results WHERE key_name = %s",
            (needs.result_key,),
        )
        row = await cur.fetchone()
        result = result_of(row) if row else None
    if needs.replicates_of is not None:
        cur = await conn.execute(
            f"SELECT {RESULT_COLUMNS} FROM results WHERE org = %s AND train_py_sha256 = %s"
            " ORDER BY created_at, key_name LIMIT %s",
            (*needs.replicates_of, MAX_CONFIRMATIONS),
        )
        replicates = tuple(result_of(row) for row in await cur.fetchall())
    if needs.sibling_key:
        # FOR SHARE: the sibling cannot change until this write commits or rolls back.
        cur = await conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE key_name = %s FOR SHARE",
            (needs.sibling_key,),
        )
        row = await cur.fetchone()
        sibling = memory_of(row) if row else None
    return Evidence(result, replicates, sibling)


async def _refusal(conn: Conn, policy: WritePolicy | None, current: Memory | None) -> str | None:
    if policy is None:
        return None
    return policy.check(current, await _evidence(conn, policy.needs))


async def _create(conn: Conn, write: Write) -> WriteOutcome:
    item, agent, now = write.item, write.agent, write.now
    cur = await conn.execute("SELECT version FROM memories WHERE key_name = %s", (item.key_name,))
    exists = await cur.fetchone()
    if exists:
        return WriteOutcome(reason=REASON_EXISTS, current_version=int(exists[0]))
    refusal = await _refusal(conn, write.policy, None)
    if refusal:
        return WriteOutcome(reason=REASON_REFUSED, detail=refusal)
    cur = await conn.execute(
        f"INSERT INTO memories ({COLUMNS}, document)"
        f" VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s, {DOCUMENT})"
        " ON CONFLICT (key_name) DO NOTHING",
        (
            item.key_name,
            agent.name,
            item.description,
            item.value,
            item.is_base64,
            now,
            now,
            agent.verified,
            *_document(item, item.description),
        ),
    )
    if not cur.rowcount:  # a concurrent create committed first: it won
        return WriteOutcome(reason=REASON_EXISTS, current_version=1)
    if write.result is not None:
        await _index_result(conn, write.result, now)
    await _audit(conn, now, agent.name, "create", item.key_name, 1, write.detail)
    return WriteOutcome(version=1)


async def _index_result(conn: Conn, row: ResultRow, now: float) -> None:
    await conn.execute(
        f"INSERT INTO results ({RESULT_COLUMNS}, created_at, {DETAIL_COLUMNS}, first_agent)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        f" {FIRST_AGENT.replace('?', '%s')})",
        (
            row.key_name,
            row.org,
            row.agent,
            row.verified,
            row.result_id,
            row.track,
            row.train_py_sha256,
            row.seed,
            row.status,
            row.provisional,
            row.val_bpb,
            now,
            *row.details(),
            row.org,
            row.train_py_sha256,
            row.agent,
        ),
    )
    await conn.execute(STANDING_UPSERT.replace("?", "%s"), (row.key_name,))


async def _update(conn: Conn, write: Write, if_match: int | None) -> WriteOutcome:
    item, now = write.item, write.now
    # FOR UPDATE: writers of this key queue here, and each sees the row its predecessor
    # committed, so a best cannot be moved past a better one written meanwhile.
    cur = await conn.execute(
        f"SELECT {COLUMNS} FROM memories WHERE key_name = %s FOR UPDATE",
        (item.key_name,),
    )
    row = await cur.fetchone()
    if row is None:
        return WriteOutcome(reason=REASON_NOT_FOUND)
    current = memory_of(row)
    if if_match is not None and if_match != current.version:
        return WriteOutcome(reason=REASON_VERSION, current_version=current.version)
    refusal = await _refusal(conn, write.policy, current)
    if refusal:
        return WriteOutcome(reason=REASON_REFUSED, detail=refusal)
    cur = await conn.execute(
        "UPDATE memories SET value = %s, is_base64 = %s, version = version + 1,"
        f" updated_at = %s, owner = %s, document = {DOCUMENT}"
        " WHERE key_name = %s AND version = %s",
        (
            item.value,
            item.is_base64,
            now,
            new_owner(write, current),
            *_document(item, current.description),
            item.key_name,
            current.version,
        ),
    )
    if not cur.rowcount:
        return WriteOutcome(reason=REASON_VERSION, current_version=current.version)
    version = current.version + 1
    await _audit(conn, now, write.agent.name, "update", item.key_name, version, write.detail)
    return WriteOutcome(version=version)
