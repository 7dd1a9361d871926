"""What only the PostgreSQL store has: migrations, its refusals, and the whole client
conformance suite through a hub over PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest

from autoresearchd.errors import HubError
from autoresearchd.hub.storage.postgres import PostgresStore
from autoresearchd.hub.storage.postgres_migrations import (
    MIGRATIONS,
    SCHEMA_VERSION,
    migrate_database,
)
from autoresearchd.hub.storage.rows import Agent, NewMemory
from autoresearchd.models import sha256_text
from autoresearchd.testing.pgcluster import Cluster, start_cluster
from tests.hub.support import InProcessHub, cli, free_port, in_process_hub, write_hub_config
from tests.memory.conformance import MemoryConformance, MemoryFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hub(postgres_url: str) -> AsyncIterator[InProcessHub]:
    hub = await in_process_hub(postgres_url)
    yield hub
    await hub.store.close()


class TestEnsueOverPostgresHubConformance(MemoryConformance):
    """Every client conformance test through the hub app on a PostgreSQL store."""

    @pytest.fixture
    async def make_memory(self, hub: InProcessHub) -> MemoryFactory:
        key = await hub.agent("alice")
        return lambda clock: hub.memory(key, clock=clock)


def dump(url: str) -> str:
    """Every row of every table, as text."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        return "\n".join(
            repr(conn.execute(f"SELECT * FROM {name}".encode()).fetchall()) for (name,) in tables
        )


async def test_registration_stores_only_the_hash_of_the_key(
    hub: InProcessHub, postgres_url: str
) -> None:
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        reply = await http.post("/auth/agent-register", json={"name": "nova"})
    api_key = reply.json()["api_key"]
    text = dump(postgres_url)
    assert api_key not in text and sha256_text(api_key) in text


def test_the_audit_log_cannot_be_truncated_either(postgres_url: str) -> None:
    with (
        psycopg.connect(postgres_url, autocommit=True) as conn,
        pytest.raises(psycopg.Error, match="append-only"),
    ):
        conn.execute("TRUNCATE audit")


async def test_migrations_apply_once_and_an_unmigrated_database_is_refused(
    postgres: Cluster,
) -> None:
    url = postgres.create_schema("hub_unmigrated")
    with pytest.raises(HubError, match=r"schema 0, this hub needs \d+: run `autoresearchd hub"):
        await PostgresStore.open(url)
    assert await migrate_database(url) == (0, SCHEMA_VERSION)
    assert await migrate_database(url) == (SCHEMA_VERSION, SCHEMA_VERSION)
    store = await PostgresStore.open(url)
    assert await store.create_org("o", 0.0)
    await store.close()


async def test_opening_with_migrate_brings_a_fresh_database_up_to_date(
    postgres: Cluster,
) -> None:
    url = postgres.create_schema("hub_at_start")
    store = await PostgresStore.open(url, migrate=True)
    agent = Agent("a", verified=True)
    assert (await store.create(agent, NewMemory("@o/k", "v", False), 0.0)).version == 1
    await store.close()


async def test_a_database_newer_than_the_hub_is_refused(postgres: Cluster) -> None:
    url = postgres.create_schema("hub_newer")
    await migrate_database(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, description) VALUES (999, 'x')")
    with pytest.raises(HubError, match="schema 999, newer than"):
        await migrate_database(url)
    with pytest.raises(HubError, match="schema 999"):
        await PostgresStore.open(url)


async def test_an_unreachable_database_is_a_503_hub_error_without_the_password() -> None:
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    with pytest.raises(HubError, match="PostgreSQL: database error") as caught:
        await migrate_database(url)
    assert caught.value.status == 503 and "s3cret" not in str(caught.value)


def test_hub_migrate_and_init_on_a_postgresql_url(postgres: Cluster, tmp_path: Path) -> None:
    url = postgres.create_schema("hub_cli")
    config = write_hub_config(tmp_path, free_port(), database=url)
    first = cli("hub", "migrate", "--config", str(config))
    assert first.returncode == 0, first.stderr
    applied = "; ".join(f"{version} ({what})" for version, what, _ in MIGRATIONS)
    assert first.stdout.strip() == f"PostgreSQL schema 0 -> {SCHEMA_VERSION}: applied {applied}"
    again = cli("hub", "migrate", "--config", str(config))
    assert again.stdout.strip() == f"PostgreSQL schema {SCHEMA_VERSION}: already current"
    init = cli("hub", "init", "--config", str(config))
    assert init.returncode == 0 and init.stdout.startswith("ard_"), init.stderr
    assert sha256_text(init.stdout.strip()) in dump(url)


def test_a_cluster_that_cannot_start_fails_loudly_with_the_servers_reason() -> None:
    with pytest.raises(HubError, match=r"pg_ctl start failed .*no_such_setting"):
        start_cluster({"no_such_setting": "1"})
