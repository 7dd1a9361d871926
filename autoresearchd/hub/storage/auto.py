"""Open or migrate the hub store that ``hub.database`` names: a SQLite file or a PostgreSQL URL.

The factory lives beside the two dialects rather than in either, so neither dialect's
module imports the other's; psycopg is imported only when a PostgreSQL URL asks for it.
"""

from __future__ import annotations

from pathlib import Path

from autoresearchd.hub.storage import sqlite_migrations
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.sqlite import SqliteStore

#: The URL schemes that select :class:`~autoresearchd.hub.storage.postgres.PostgresStore`.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(database: str | Path) -> bool:
    """Whether ``hub.database`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


async def open_store(
    database: str | Path, *, migrate: bool = False, pool_size: int | None = None
) -> HubStore:
    """The store for ``hub.database``: a ``postgresql://`` URL or a SQLite file.

    A SQLite file brings its own schema up to date on open; a PostgreSQL database is
    migrated only when ``migrate`` is set and otherwise must already be current.
    """
    if is_postgres_url(database):
        from autoresearchd.hub.storage.postgres import PostgresStore  # psycopg only here

        if pool_size is None:
            return await PostgresStore.open(str(database), migrate=migrate)
        return await PostgresStore.open(str(database), migrate=migrate, pool_size=pool_size)
    return SqliteStore(Path(database))


async def migrate_store(database: str | Path) -> str:
    """Bring the schema of ``hub.database`` up to date; one line naming what was applied."""
    if is_postgres_url(database):
        from autoresearchd.hub.storage import postgres_migrations  # psycopg only here

        before, after = await postgres_migrations.migrate_database(str(database))
        done = [(v, what) for v, what, _ in postgres_migrations.MIGRATIONS if before < v <= after]
        return _report("PostgreSQL", before, after, done)
    store = SqliteStore(Path(database))
    await store.close()
    before, after = store.schema_change
    done = [(m.version, m.description) for m in sqlite_migrations.applied(before, after)]
    return _report(f"{database}: SQLite", before, after, done)


def _report(what: str, before: int, after: int, done: list[tuple[int, str]]) -> str:
    if not done:
        return f"{what} schema {after}: already current"
    steps = "; ".join(f"{version} ({description})" for version, description in done)
    return f"{what} schema {before} -> {after}: applied {steps}"
