"""The hub's data in PostgreSQL: :class:`PostgresStore`, the ``HubStore`` Protocol's
PostgreSQL dialect.

Any number of hub replicas may share one database, because every guarantee of the
:class:`~autoresearchd.hub.storage.protocol.HubStore` Protocol is kept by PostgreSQL
itself, never by a lock in one process: how each write holds its rows is told in
:mod:`~autoresearchd.hub.storage.postgres_statements`. Results are write-once rows, so a
replication count can only grow under a policy's feet, never shrink. Every write appends
to ``audit`` in its own transaction, and a trigger refuses any ``UPDATE``, ``DELETE`` or
``TRUNCATE`` of it. Search ranks a ``tsvector`` of the key, description and text with
``ts_rank`` normalised into [0, 1). Schema changes are the numbered migrations of
:mod:`~autoresearchd.hub.storage.postgres_migrations` (``hub migrate``); a store refuses to
open a database whose schema is not the current one. A read is one autocommit statement
(one snapshot, no ``BEGIN``/``COMMIT`` round trips). The only thing held in process memory
is the agent of each API key seen (:mod:`~autoresearchd.hub.keycache`), and only while
:meth:`PostgresStore.watch` listens on ``AGENTS_CHANNEL``, which every change of an agent
notifies in its own transaction. Each replica keeps a pool of up to ``hub.pool_size``
connections (:data:`POOL_SIZE`).
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
from autoresearchd.hub.storage import postgres_statements as sql
from autoresearchd.hub.storage.postgres_migrations import check_schema, migrate_database
from autoresearchd.hub.storage.postgres_statements import (
    AGENTS_CHANNEL,
    CONNECT_TIMEOUT_S,
    Conn,
    unavailable,
)
from autoresearchd.hub.storage.protocol import (
    CreateKey,
    KeyWrite,
    Plan,
    ReadKeys,
    WriteOutcome,
    WritePolicy,
)
from autoresearchd.hub.storage.rows import Agent, AuditEntry, Hit, Memory, NewMemory, ResultRow
from autoresearchd.hub.storage.shared_sql import (
    COLUMNS,
    MAX_QUERY_WORDS,
    check_read_only,
    like_prefix,
    memory_of,
    revoked_key_hash,
    unstorable,
)

log = structlog.get_logger(__name__)
T = TypeVar("T")

POOL_SIZE = 10
#: How long :meth:`PostgresStore.watch` waits before listening again after losing its link.
WATCH_RETRY_S = 1.0


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
        schema is not the current one is refused with a HubError."""
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
            async with pool.connection() as conn:
                await check_schema(conn)
        except psycopg.Error as exc:
            await pool.close()
            raise unavailable(exc) from None
        except HubError:
            await pool.close()
            raise
        return store

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
            raise unavailable(exc) from None

    @asynccontextmanager
    async def _statement(self) -> AsyncIterator[Conn]:
        """A pooled connection for one autocommit statement: one snapshot, one round trip."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except (psycopg.DataError, UnicodeEncodeError) as exc:
            raise unstorable(exc) from None
        except psycopg.Error as exc:
            raise unavailable(exc) from None

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
                await sql.audit(conn, now, "admin", "create_org", f"@{name}", None)
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
                await sql.audit(conn, now, agent.name, "register", "", None)
            return bool(cur.rowcount)

    async def verify(self, name: str, code_hash: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "UPDATE agents SET verified = true, verified_at = %s"
                " WHERE name = %s AND verification_code = %s AND NOT verified",
                (now, name, code_hash),
            )
            if cur.rowcount:
                await sql.agents_changed(conn)
                await sql.audit(conn, now, name, "verify", "", None)
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
                await sql.agents_changed(conn)
                await sql.audit(conn, now, name, "forget", "", None)
            return bool(cur.rowcount)

    async def revoke(self, name: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "UPDATE agents SET key_hash = %s WHERE name = %s"
                " AND key_hash NOT LIKE 'revoked:%%'",
                (revoked_key_hash(), name),
            )
            if cur.rowcount:
                await sql.agents_changed(conn)
                await sql.audit(conn, now, name, "revoke", "", None)
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
            return await sql.create(conn, KeyWrite(agent, item, now, policy, result, detail))

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
            return await sql.update(
                conn, KeyWrite(agent, item, now, policy, None, detail), if_match
            )

    async def transact(self, plan: Plan[T]) -> T:
        async with self._transaction() as conn:
            answer: Any = None
            try:
                while True:
                    step = plan.send(answer)
                    if isinstance(step, ReadKeys):
                        answer = await sql.read_keys(conn, step)
                    elif isinstance(step, CreateKey):
                        answer = await sql.create(conn, step.write)
                    else:
                        answer = await sql.update(conn, step.write, step.if_match)
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
                await sql.audit(conn, now, agent.name, "delete", key_name, None)
            return bool(cur.rowcount)

    async def mark_verified(self, name: str, now: float) -> bool:
        async with self._transaction() as conn:
            cur = await conn.execute(
                "UPDATE agents SET verified = true, verified_at = %s"
                " WHERE name = %s AND NOT verified",
                (now, name),
            )
            if cur.rowcount:
                await sql.agents_changed(conn)  # a cached unverified agent must not outlive it
                await sql.audit(conn, now, name, "verify", "", None)
            return bool(cur.rowcount)

    async def select(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        # One statement sees one snapshot. The queries carry no literal ``%`` or ``?``:
        # every pattern travels as a parameter, so the placeholders translate one for one.
        check_read_only(query)
        return await self._all(query.replace("?", "%s"), params)
