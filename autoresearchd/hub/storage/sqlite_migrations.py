"""The SQLite hub's schema as numbered migrations, applied when a store opens the file.

Each :class:`Migration` adds the columns it names where they are missing, then runs its
statements, all written to apply again harmlessly (``IF NOT EXISTS``, columns checked
first), since databases made before the migrations were numbered hold any mix of them. The
version is the one row of ``schema_version``. :func:`migrate` applies those past it in the
opening store's write transaction; a file newer than this code is refused, not opened.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from autoresearchd.errors import HubError
from autoresearchd.hub.storage.shared_sql import DASHBOARD_BACKFILL, DASHBOARD_INDEXES

SCHEMA_1 = """
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

SCHEMA_2 = """
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
CREATE INDEX IF NOT EXISTS audit_by_key ON audit (key_name, seq)
"""

SCHEMA_4 = """
CREATE TABLE IF NOT EXISTS auth_epoch (n INTEGER NOT NULL);
INSERT INTO auth_epoch (n) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM auth_epoch)
"""

#: A source's results in the order they came: who first published it (read by every result
#: inserted) and its replicates are one seek. With only ``(org, train_py_sha256)``, SQLite
#: read them through ``results_by_time`` instead (the order without a sort), every result
#: of the org: 0.2 ms an insert at 1,600 results, growing with them. It serves every
#: lookup the old index did, so that one goes.
SCHEMA_5 = """
CREATE INDEX IF NOT EXISTS results_by_source ON results
    (org, train_py_sha256, created_at, key_name);
DROP INDEX IF EXISTS results_by_sha
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """Schema ``version``: the ``columns`` (table, column, declaration) it adds where they
    are missing, then its ``statements``."""

    version: int
    description: str
    statements: str
    columns: tuple[tuple[str, str, str], ...] = ()


MIGRATIONS = (
    Migration(
        1, "orgs, agents, memories, full-text search and the append-only audit log", SCHEMA_1
    ),
    Migration(
        2,
        "email verification and the results index",
        SCHEMA_2,
        (
            ("agents", "email", "TEXT NOT NULL DEFAULT ''"),
            ("agents", "verified_at", "REAL"),
            ("memories", "verified", "INTEGER NOT NULL DEFAULT 0"),
        ),
    ),
    Migration(
        3,
        "the dashboard's result columns, indexes and standings",
        DASHBOARD_INDEXES + ";\n" + DASHBOARD_BACKFILL,
        (
            ("results", "tier", "TEXT NOT NULL DEFAULT ''"),
            ("results", "proposer", "TEXT NOT NULL DEFAULT ''"),
            ("results", "description", "TEXT NOT NULL DEFAULT ''"),
            ("results", "duration_s", "REAL NOT NULL DEFAULT 0"),
            ("results", "parent_sha256", "TEXT NOT NULL DEFAULT ''"),
            ("results", "first_agent", "TEXT NOT NULL DEFAULT ''"),
        ),
    ),
    Migration(4, "the auth epoch every process's key cache watches", SCHEMA_4),
    Migration(5, "a source's results by time, in one index", SCHEMA_5),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def migrate(conn: sqlite3.Connection, path: object) -> tuple[int, int]:
    """Apply the migrations past the file's version, inside the caller's write transaction;
    the schema version before and after. ``path`` names the file in errors."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    before = 0 if row[0] is None else int(row[0])
    if before > SCHEMA_VERSION:
        raise HubError(
            f"{path}: the hub database is at schema {before}, newer than this hub's"
            f" {SCHEMA_VERSION}; upgrade autoresearchd"
        )
    for migration in MIGRATIONS:
        if migration.version > before:
            _apply(conn, migration)
    if row[0] is None:
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif before < SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    return before, SCHEMA_VERSION


def applied(before: int, after: int) -> list[Migration]:
    """The migrations that took a file from schema ``before`` to ``after``."""
    return [m for m in MIGRATIONS if before < m.version <= after]


def _apply(conn: sqlite3.Connection, migration: Migration) -> None:
    for table, column, declaration in migration.columns:
        known = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in known:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    for statement in filter(str.strip, migration.statements.split(";\n")):
        conn.execute(statement)
