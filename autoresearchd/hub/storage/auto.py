"""Open the hub store that ``hub.database`` names: a SQLite file or a PostgreSQL URL.

The factory lives beside the two stores rather than in either, so neither store module
imports the other's; psycopg is imported only when a PostgreSQL URL asks for it.
"""

from __future__ import annotations

from pathlib import Path

from autoresearchd.hub.store import HubStore, SqliteStore, is_postgres_url


async def open_store(
    database: str | Path, *, migrate: bool = False, pool_size: int | None = None
) -> HubStore:
    """The store for ``hub.database``: a ``postgresql://`` URL or a SQLite file.

    A SQLite file brings its own schema up to date on open; a PostgreSQL database is
    migrated only when ``migrate`` is set and otherwise must already be current.
    """
    if is_postgres_url(database):
        from autoresearchd.hub.pg import PostgresStore  # psycopg only where it is used

        if pool_size is None:
            return await PostgresStore.open(str(database), migrate=migrate)
        return await PostgresStore.open(str(database), migrate=migrate, pool_size=pool_size)
    return SqliteStore(Path(database))
