"""The hub's administration, as ``autoresearchd hub init|migrate|revoke`` runs it.

:func:`database_path` says which database ``hub.database`` names; :func:`init_hub` creates
the org and the admin key and seeds ``best/`` (:func:`seed_best`); :func:`migrate_hub`
brings the schema up to date; :func:`revoke_agent` makes a key unusable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import structlog

from autoresearchd.config import SQLITE_URL, Config
from autoresearchd.ensue import values
from autoresearchd.errors import ConfigError, HubError
from autoresearchd.hub.credentials import hash_key, new_api_key, new_verification_code
from autoresearchd.hub.storage.auto import is_postgres_url, migrate_store, open_store
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.rows import Agent, NewMemory
from autoresearchd.models import sha256_text
from autoresearchd.statedir import StateDir

log = structlog.get_logger(__name__)

ADMIN = "admin"


def database_path(config: Config) -> str | Path:
    """``hub.database``: a ``postgresql://`` URL, or the SQLite file (relative to the config),
    named as a path or as a ``sqlite:///`` URL (``sqlite:////srv/hub.sqlite`` is absolute)."""
    database = config.hub.database
    if is_postgres_url(database):
        return database
    if not database:
        return StateDir(config.daemon.state_dir).hub_database
    if database.startswith(SQLITE_URL):
        database = database[len(SQLITE_URL) :]
    path = Path(database).expanduser()
    return path if path.is_absolute() else (config.source.parent / path).resolve()


async def init_hub(config: Config, baseline: Path | None) -> str:
    """Create the org and the admin agent, seed ``best/``; return the admin API key."""
    org = config.hub.org
    if not org:
        raise ConfigError("expected an organisation name", path=str(config.source), key="hub.org")
    store = await open_store(database_path(config), migrate=True)
    try:
        return await _init(store, org, baseline, time.time())
    finally:
        await store.close()


async def revoke_agent(config: Config, name: str) -> bool:
    """Revoke ``name``'s API key; every hub process on the database refuses it from now on
    (PostgreSQL replicas once the notification reaches them). False: no such live key."""
    store = await open_store(database_path(config))
    try:
        revoked = await store.revoke(name, time.time())
    finally:
        await store.close()
    log.info("agent_revoked", agent=name, revoked=revoked)
    return revoked


async def migrate_hub(config: Config) -> str:
    """Bring the hub's database schema up to date; one line that says what was applied.

    A SQLite database migrates itself whenever it is opened, so for it this only opens it.
    """
    report = await migrate_store(database_path(config))
    log.info("hub_migrated", report=report)
    return report


async def _init(store: HubStore, org: str, baseline: Path | None, now: float) -> str:
    source = _read_baseline(baseline) if baseline is not None else None
    await store.create_org(org, now)
    api_key = new_api_key()
    admin = Agent(ADMIN, is_admin=True, verified=True)
    if not await store.register(admin, hash_key(api_key), hash_key(new_verification_code()), now):
        raise HubError(f"this hub already has an {ADMIN} agent; it was initialised before")
    if source is not None:
        await seed_best(store, org, source, now)
    log.info("hub_initialised", org=org, seeded=source is not None)
    return api_key


def _read_baseline(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the baseline: {exc}", path=str(path)) from None


async def seed_best(store: HubStore, org: str, source: str, now: float) -> None:
    """Write the baseline ``source`` as ``@org/best/``: its metadata (unscored) and source."""
    sha = sha256_text(source)
    metadata = {
        "val_bpb": None,
        "train_py_sha256": sha,
        "agent_id": ADMIN,
        "description": "baseline",
        "result_id": "",
        "updated_at": now,
    }
    for rest, text in (("best/metadata", json.dumps(metadata)), ("best/train_py", source)):
        value = values.encode(text)
        await store.create(
            Agent(ADMIN, is_admin=True, verified=True),
            NewMemory(f"@{org}/{rest}", value, True, rest),
            now,
            detail=json.dumps(metadata) if rest == "best/metadata" else "",
        )
