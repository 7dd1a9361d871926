"""The PostgreSQL dialect's statements: each runs inside the caller's transaction.

:class:`~autoresearchd.hub.storage.postgres.PostgresStore` owns the pool and the
transactions; this module holds what each write says, with every decision between the
statements taken by :mod:`~autoresearchd.hub.storage.decisions`. Create-if-absent is
``INSERT ... ON CONFLICT DO NOTHING`` (a second writer waits on the unique index, then
inserts nothing). An update reads its row ``FOR UPDATE``, so writers of one key queue on
the row lock and each runs its write policy on the row as the previous writer committed
it; the ``UPDATE ... WHERE version =`` that follows is the compare-and-set. A best's source
reads its metadata ``FOR SHARE``, so the metadata cannot move while a source that matched
it is written. Every change of an agent notifies :data:`AGENTS_CHANNEL` on commit.
"""

from __future__ import annotations

from typing import Any

import psycopg

from autoresearchd.errors import HubError
from autoresearchd.hub.storage import decisions
from autoresearchd.hub.storage.protocol import (
    Evidence,
    KeyWrite,
    Needs,
    ReadKeys,
    WriteOutcome,
    WritePolicy,
)
from autoresearchd.hub.storage.rows import Memory, NewMemory, ResultRow, indexed, search_text
from autoresearchd.hub.storage.shared_sql import (
    COLUMNS,
    DETAIL_COLUMNS,
    FIRST_AGENT,
    MAX_CONFIRMATIONS,
    RESULT_COLUMNS,
    STANDING_UPSERT,
    memory_of,
    result_of,
)

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

CONNECT_TIMEOUT_S = 30.0
#: The channel a change of an agent (verified, forgotten, revoked) notifies on commit.
AGENTS_CHANNEL = "autoresearchd_agents"


def unavailable(exc: psycopg.Error) -> HubError:
    # Never the URL: it may carry a password.
    problem = " ".join(str(exc).split())
    return HubError(f"PostgreSQL: database error: {problem}", status=503)


DOCUMENT = "to_tsvector('simple', %s || ' ' || %s || ' ' || %s)"


def _document(item: NewMemory, description: str) -> tuple[str, str, str]:
    """The key, description and text :data:`DOCUMENT` indexes; nothing for a marker."""
    if not indexed(item.key_name):
        return "", "", ""
    return item.key_name, description, search_text(item)


async def audit(
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


async def agents_changed(conn: Conn) -> None:
    """Tell every replica's key cache, on commit, that an agent changed."""
    await conn.execute(f"NOTIFY {AGENTS_CHANNEL}")


async def read_keys(conn: Conn, step: ReadKeys) -> list[Memory | None]:
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


async def _policy_verdict(
    conn: Conn, policy: WritePolicy | None, current: Memory | None
) -> WriteOutcome | None:
    if policy is None:
        return None
    return decisions.policy_verdict(policy, current, await _evidence(conn, policy.needs))


async def _version(conn: Conn, key_name: str) -> int | None:
    cur = await conn.execute("SELECT version FROM memories WHERE key_name = %s", (key_name,))
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def _create_blocked(conn: Conn, write: KeyWrite) -> WriteOutcome | None:
    """What ends a create before its ``INSERT`` (the key read first only where
    :func:`~autoresearchd.hub.storage.decisions.reads_first` says so)."""
    key_name = write.item.key_name
    if decisions.reads_first(write.policy):
        blocked = decisions.create_blocked(await _version(conn, key_name))
        return blocked or await _policy_verdict(conn, write.policy, None)
    refused = decisions.refused_unread(write.policy)
    if refused is None:
        return None
    return decisions.create_blocked(await _version(conn, key_name)) or refused


async def create(conn: Conn, write: KeyWrite) -> WriteOutcome:
    item, agent, now = write.item, write.agent, write.now
    blocked = await _create_blocked(conn, write)
    if blocked:
        return blocked
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
    if not cur.rowcount:  # the key is there, or a concurrent create committed it first
        return decisions.created(False, await _version(conn, item.key_name))
    if write.result is not None:
        await _index_result(conn, write.result, now)
    await audit(conn, now, agent.name, "create", item.key_name, 1, write.detail)
    return decisions.created(True)


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


async def update(conn: Conn, write: KeyWrite, if_match: int | None) -> WriteOutcome:
    item, now = write.item, write.now
    # FOR UPDATE: writers of this key queue here, and each sees the row its predecessor
    # committed, so a best cannot be moved past a better one written meanwhile.
    cur = await conn.execute(
        f"SELECT {COLUMNS} FROM memories WHERE key_name = %s FOR UPDATE",
        (item.key_name,),
    )
    row = await cur.fetchone()
    current = decisions.update_target(None if row is None else memory_of(row), if_match)
    if isinstance(current, WriteOutcome):
        return current
    blocked = await _policy_verdict(conn, write.policy, current)
    if blocked:
        return blocked
    cur = await conn.execute(
        "UPDATE memories SET value = %s, is_base64 = %s, version = version + 1,"
        f" updated_at = %s, owner = %s, document = {DOCUMENT}"
        " WHERE key_name = %s AND version = %s",
        (
            item.value,
            item.is_base64,
            now,
            decisions.new_owner(write, current),
            *_document(item, current.description),
            item.key_name,
            current.version,
        ),
    )
    outcome = decisions.updated(current, bool(cur.rowcount))
    if outcome.version is None:
        return outcome
    await audit(conn, now, write.agent.name, "update", item.key_name, outcome.version, write.detail)
    return outcome
