"""The PostgreSQL hub's schema as numbered migrations, applied by ``hub migrate``.

Each of :data:`MIGRATIONS` runs once, in order, in one transaction that also records it in
``schema_migrations``, under an advisory lock, so replicas starting together migrate once.
A store refuses to open a database whose schema is not the current one (:func:`check_schema`).
"""

from __future__ import annotations

import psycopg

from autoresearchd.errors import HubError
from autoresearchd.hub.storage.postgres_statements import CONNECT_TIMEOUT_S, Conn, unavailable
from autoresearchd.hub.storage.shared_sql import DASHBOARD_BACKFILL, DASHBOARD_INDEXES

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


async def migrate_database(url: str) -> tuple[int, int]:
    """Apply the pending :data:`MIGRATIONS`; the schema version before and after."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT_S)
        ) as conn:
            return await _migrate(conn)
    except psycopg.Error as exc:
        raise unavailable(exc) from None


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


async def check_schema(conn: Conn) -> None:
    """Refuse a database whose schema is not :data:`SCHEMA_VERSION`."""
    version = await _schema_version(conn)
    if version != SCHEMA_VERSION:
        raise HubError(
            f"the database is at schema {version}, this hub needs {SCHEMA_VERSION}:"
            " run `autoresearchd hub migrate --config <file>`"
        )
