"""The SQLite dialect's statements: each a function of one connection, run in its transaction.

:class:`~autoresearchd.hub.storage.sqlite.SqliteStore` decides which connection and thread
a statement runs on; this module holds only what each one says. Create-if-absent is one
``INSERT ... ON CONFLICT DO NOTHING``; compare-and-set is one ``UPDATE ... WHERE version =
?`` inside the transaction that read the row and the evidence its write policy asked for,
with every decision between them taken by :mod:`~autoresearchd.hub.storage.decisions`.
Every write appends to ``audit`` (which triggers keep append-only) in the same transaction;
a ``results/`` record is indexed in ``results`` and added to its agent's ``standings`` in
the transaction that creates it; its statements on the full-text index may be held to the
end of the writer's group (:func:`holding_index`). A write that finds the write lock taken
raises :class:`Busy` before it did anything, so it may run again elsewhere.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from autoresearchd.hub.keycache import KeyCache
from autoresearchd.hub.storage import decisions
from autoresearchd.hub.storage.protocol import (
    CreateKey,
    Evidence,
    KeyWrite,
    Needs,
    Plan,
    ReadKeys,
    WriteOutcome,
    WritePolicy,
)
from autoresearchd.hub.storage.rows import (
    Agent,
    AuditEntry,
    Hit,
    Memory,
    ResultRow,
    indexed,
    search_text,
)
from autoresearchd.hub.storage.shared_sql import (
    COLUMNS,
    DETAIL_COLUMNS,
    FIRST_AGENT,
    MAX_CONFIRMATIONS,
    MAX_QUERY_WORDS,
    RESULT_COLUMNS,
    STANDING_UPSERT,
    check_read_only,
    memory_of,
    result_of,
    revoked_key_hash,
)

T = TypeVar("T")


class Busy(Exception):
    """Another connection holds the database's write lock (SQLITE_BUSY)."""


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    nested = conn.in_transaction  # a step of a plan: the plan's transaction holds it
    if nested:
        yield conn
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            raise Busy from None  # nothing was done: the write may run again elsewhere
        raise
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


#: The full-text index statements of the write running on this thread while the group
#: writer holds them back (:func:`holding_index`); unset: they run at once.
_held = threading.local()


def _index(conn: sqlite3.Connection, statement: str, params: tuple[Any, ...]) -> None:
    """Run a statement on ``memories_fts`` now, or hold it for the end of the group."""
    held: list[tuple[str, tuple[Any, ...]]] | None = getattr(_held, "statements", None)
    if held is None:
        conn.execute(statement, params)
    else:
        held.append((statement, params))


@contextmanager
def holding_index() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """Hold back the full-text index statements this thread runs meanwhile, in the list
    yielded, for :func:`run_index` to run later in the same transaction, in order.

    FTS5 writes what it has pending as a new segment of the index at every savepoint
    (and merges segments as they pile up), so indexing inside each write's own savepoint
    of a group cost a segment per write; held to the end of the group, it costs one. Each
    statement names its row by rowid, so they do the same whenever they run."""
    held: list[tuple[str, tuple[Any, ...]]] = []
    _held.statements = held
    try:
        yield held
    finally:
        _held.statements = None


def run_index(conn: sqlite3.Connection, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    for statement, params in statements:
        conn.execute(statement, params)


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


def insert_org(conn: sqlite3.Connection, name: str, now: float) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO orgs (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, now)
        )
        if cur.rowcount:
            _audit(conn, now, "admin", "create_org", f"@{name}", None)
        return bool(cur.rowcount)


def insert_agent(
    conn: sqlite3.Connection, agent: Agent, key_hash: str, code_hash: str, now: float
) -> bool:
    with transaction(conn):
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


def agent_for(conn: sqlite3.Connection, key_hash: str, cache: KeyCache[Agent]) -> Agent | None:
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


def revoke(conn: sqlite3.Connection, name: str, now: float) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "UPDATE agents SET key_hash = ? WHERE name = ? AND key_hash NOT LIKE 'revoked:%'",
            (revoked_key_hash(), name),
        )
        if cur.rowcount:
            _agents_changed(conn)
            _audit(conn, now, name, "revoke", "", None)
        return bool(cur.rowcount)


def verify(conn: sqlite3.Connection, name: str, code_hash: str, now: float) -> bool:
    with transaction(conn):
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


def forget(conn: sqlite3.Connection, name: str, key_hash: str, now: float) -> bool:
    with transaction(conn):
        cur = conn.execute(
            "DELETE FROM agents WHERE name = ? AND key_hash = ? AND verified = 0",
            (name, key_hash),
        )
        if cur.rowcount:
            _agents_changed(conn)
            _audit(conn, now, name, "forget", "", None)
        return bool(cur.rowcount)


def delete(conn: sqlite3.Connection, agent: str, key_name: str, now: float) -> bool:
    with transaction(conn):
        row = conn.execute(
            "SELECT seq FROM memories WHERE key_name = ? AND owner = ?", (key_name, agent)
        ).fetchone()
        if row is None:
            return False
        _index(conn, "DELETE FROM memories_fts WHERE rowid = ?", (row[0],))
        conn.execute("DELETE FROM memories WHERE seq = ?", (row[0],))
        _audit(conn, now, agent, "delete", key_name, None)
        return True


def mark_verified(conn: sqlite3.Connection, name: str, now: float) -> bool:
    with transaction(conn):
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


def _policy_verdict(
    conn: sqlite3.Connection, policy: WritePolicy | None, current: Memory | None
) -> WriteOutcome | None:
    if policy is None:
        return None
    return decisions.policy_verdict(policy, current, _evidence(conn, policy.needs))


def _version(conn: sqlite3.Connection, key_name: str) -> int | None:
    row = conn.execute("SELECT version FROM memories WHERE key_name = ?", (key_name,)).fetchone()
    return None if row is None else int(row[0])


def _create_blocked(conn: sqlite3.Connection, write: KeyWrite) -> WriteOutcome | None:
    """What ends a create before its ``INSERT`` (the key read first only where
    :func:`~autoresearchd.hub.storage.decisions.reads_first` says so)."""
    key_name = write.item.key_name
    if decisions.reads_first(write.policy):
        blocked = decisions.create_blocked(_version(conn, key_name))
        return blocked or _policy_verdict(conn, write.policy, None)
    refused = decisions.refused_unread(write.policy)
    if refused is None:
        return None
    return decisions.create_blocked(_version(conn, key_name)) or refused


def create(conn: sqlite3.Connection, write: KeyWrite) -> WriteOutcome:
    item, agent, now = write.item, write.agent, write.now
    with transaction(conn):
        blocked = _create_blocked(conn, write)
        if blocked:
            return blocked
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
        if not cur.rowcount:  # the key is there: at which version?
            return decisions.created(False, _version(conn, item.key_name))
        if indexed(item.key_name):
            _index(
                conn,
                "INSERT INTO memories_fts (rowid, key_name, description, body) VALUES (?, ?, ?, ?)",
                (cur.lastrowid, item.key_name, item.description, search_text(item)),
            )
        if write.result is not None:
            _index_result(conn, write.result, now)
        _audit(conn, now, agent.name, "create", item.key_name, 1, write.detail)
        return decisions.created(True)


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


def get(conn: sqlite3.Connection, key_names: Sequence[str]) -> list[Memory | None]:
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


def transact(conn: sqlite3.Connection, plan: Plan[T]) -> T:
    with transaction(conn):
        answer: Any = None
        try:
            while True:
                step = plan.send(answer)
                if isinstance(step, ReadKeys):
                    answer = _get_in(conn, step.key_names)
                elif isinstance(step, CreateKey):
                    answer = create(conn, step.write)
                else:
                    answer = update(conn, step.write, step.if_match)
        except StopIteration as done:
            result: T = done.value
            return result


def update(conn: sqlite3.Connection, write: KeyWrite, if_match: int | None) -> WriteOutcome:
    item, now = write.item, write.now
    with transaction(conn):
        row = conn.execute(
            f"SELECT {COLUMNS} FROM memories WHERE key_name = ?", (item.key_name,)
        ).fetchone()
        current = decisions.update_target(None if row is None else memory_of(row), if_match)
        if isinstance(current, WriteOutcome):
            return current
        blocked = _policy_verdict(conn, write.policy, current)
        if blocked:
            return blocked
        # The version in WHERE makes this a compare-and-set even where the read above
        # does not lock the row (PostgreSQL at READ COMMITTED).
        cur = conn.execute(
            "UPDATE memories SET value = ?, is_base64 = ?, version = version + 1,"
            " updated_at = ?, owner = ? WHERE key_name = ? AND version = ?",
            (
                item.value,
                int(item.is_base64),
                now,
                decisions.new_owner(write, current),
                item.key_name,
                current.version,
            ),
        )
        outcome = decisions.updated(current, bool(cur.rowcount))
        if outcome.version is None:
            return outcome
        if indexed(item.key_name):
            (seq,) = conn.execute(
                "SELECT seq FROM memories WHERE key_name = ?", (item.key_name,)
            ).fetchone()
            _index(
                conn, "UPDATE memories_fts SET body = ? WHERE rowid = ?", (search_text(item), seq)
            )
        _audit(conn, now, write.agent.name, "update", item.key_name, outcome.version, write.detail)
        return outcome


def history(conn: sqlite3.Connection, key_name: str, limit: int) -> list[AuditEntry]:
    rows = conn.execute(
        "SELECT at, agent, action, key_name, version, detail FROM audit"
        " WHERE key_name = ? AND action IN ('create', 'update') ORDER BY seq DESC LIMIT ?",
        (key_name, limit),
    ).fetchall()
    return [AuditEntry(float(a), str(g), str(c), str(k), v, str(d)) for a, g, c, k, v, d in rows]


def select(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    check_read_only(sql)
    conn.execute("BEGIN")  # one snapshot, so a page and its counts agree
    try:
        return [tuple(row) for row in conn.execute(sql, tuple(params)).fetchall()]
    finally:
        conn.execute("COMMIT")


#: The last code point: a prefix's successor drops it and carries to the character before.
_LAST = chr(0x10FFFF)
_SURROGATES = range(0xD800, 0xE000)


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """The text that starts with ``prefix`` as a half-open range ``[low, high)`` in code-point
    order, which is UTF-8's byte order and SQLite's BINARY collation: a range on an indexed
    column reads the index, and tells case apart, where SQLite's ``LIKE`` does neither.
    ``high`` is None when no text sorts after every match (an empty prefix)."""
    stem = prefix.rstrip(_LAST)
    if not stem:
        return prefix, None
    after = ord(stem[-1]) + 1
    if after in _SURROGATES:  # no text holds them; the next code point a key may hold
        after = _SURROGATES.stop
    return prefix, stem[:-1] + chr(after)


def prefix_condition(column: str, prefix: str) -> tuple[str, tuple[str, ...]]:
    """``column`` starts with ``prefix``, as SQL and its parameters (see :func:`prefix_range`)."""
    low, high = prefix_range(prefix)
    if high is None:
        return f"{column} >= ?", (low,)
    return f"({column} >= ? AND {column} < ?)", (low, high)


def list_keys(conn: sqlite3.Connection, prefix: str, limit: int) -> list[Memory]:
    under, params = prefix_condition("key_name", prefix)
    rows = conn.execute(
        f"SELECT {COLUMNS} FROM memories WHERE {under} ORDER BY seq LIMIT ?", (*params, limit)
    ).fetchall()
    return [memory_of(row) for row in rows]


def _fts_query(query: str) -> str:
    """Quote each word so user text is never read as FTS5 syntax; any word may match.

    Words past :data:`MAX_QUERY_WORDS` are ignored, as in PostgreSQL: a query of 100,000
    words held a thread for seconds.
    """
    words = [w.replace('"', '""') for w in query.split()[:MAX_QUERY_WORDS]]
    return " OR ".join(f'"{w}"' for w in words)


_HIT_COLUMNS = ", ".join("m." + column.strip() for column in COLUMNS.split(","))
#: The best matches by bm25 (ties: the older row first), picked inside the full-text index
#: before any row of ``memories`` is read, each with whether its key is under the prefix
#: (``{under}``, the same condition as in :data:`TOP_MATCHES_UNDER`): reading and sorting
#: every match's whole row took half of a search's time. Parameters: the condition's, MATCH,
#: the limit.
TOP_MATCHES = (
    f"SELECT {_HIT_COLUMNS}, top.rank, {{under}}"
    " FROM (SELECT rowid, bm25(memories_fts) AS rank FROM memories_fts"
    " WHERE memories_fts MATCH ? ORDER BY rank, rowid LIMIT ?) AS top"
    " JOIN memories m ON m.seq = top.rowid ORDER BY top.rank, top.rowid"
)
#: The best matches under the prefix, in the same order, when :data:`TOP_MATCHES` found
#: keys outside it; it reads every match's key. Parameters: MATCH, the condition's, limit.
TOP_MATCHES_UNDER = (
    f"SELECT {_HIT_COLUMNS}, bm25(memories_fts) AS rank, 1"
    " FROM memories_fts JOIN memories m ON m.seq = memories_fts.rowid"
    " WHERE memories_fts MATCH ? AND {under}"
    " ORDER BY rank, memories_fts.rowid LIMIT ?"
)


def search(conn: sqlite3.Connection, query: str, prefix: str, limit: int) -> list[Hit]:
    match = _fts_query(query)
    if not match:
        return []
    under, params = prefix_condition("m.key_name", prefix)
    rows = conn.execute(TOP_MATCHES.format(under=under), (*params, match, limit)).fetchall()
    # Fewer than ``limit`` rows are every match; ``limit`` all under the prefix are the
    # best under it too (any other is ranked after them). Only otherwise read them all.
    if len(rows) == limit and not all(row[10] for row in rows):
        query_under = TOP_MATCHES_UNDER.format(under=under)
        rows = conn.execute(query_under, (match, *params, limit)).fetchall()
    return [Hit(memory_of(row[:9]), _score(row[9])) for row in rows if row[10]]


def _score(rank: float) -> float:
    """bm25 is negative, lower is better: -r / (1 - r) maps it into [0, 1), higher is better."""
    return min(1.0, max(0.0, -rank / (1.0 - rank))) if rank < 0 else 0.0
