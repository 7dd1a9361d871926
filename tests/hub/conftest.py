"""Fixtures for the hub's tests: a real PostgreSQL cluster, and the database to test on.

The cluster starts once per session (only when a test asks for it) in a temporary
folder; if it cannot start, every test that needs it errors with initdb's or pg_ctl's
own output: PostgreSQL tests are never skipped. Each test gets a fresh database copied
from a migrated template.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from autoresearchd.hub.pg import migrate_database
from autoresearchd.hub.pgcluster import Cluster, start_cluster

TEMPLATE = "hub_template"
_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throwaway cluster with a migrated template database."""
    cluster = start_cluster()
    try:
        anyio.run(migrate_database, cluster.create_database(TEMPLATE))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: Cluster) -> str:
    """The URL of a fresh, migrated database of its own."""
    return postgres.create_database(f"hub_{next(_databases)}", TEMPLATE)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """``hub.database`` for each store: a fresh SQLite file, then a fresh PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "hub.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return url
