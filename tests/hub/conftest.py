"""Fixtures for the hub's tests: a real PostgreSQL cluster, and the database to test on.

The cluster starts once per session (only when a test asks for it) in a temporary
folder; if it cannot start, every test that needs it errors with initdb's or pg_ctl's
own output: PostgreSQL tests are never skipped. Each test gets a fresh, migrated schema
of its own (a URL whose search_path names it), which is much faster than a database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from autoresearchd.hub.storage.postgres_migrations import migrate_database
from autoresearchd.testing.pgcluster import Cluster, start_cluster

_schemas = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throwaway cluster for this session."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: Cluster) -> str:
    """The URL of a fresh, migrated schema of its own."""
    url = postgres.create_schema(f"hub_{next(_schemas)}")
    anyio.run(migrate_database, url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """``hub.database`` for each store: a fresh SQLite file, then a fresh PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "hub.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url
