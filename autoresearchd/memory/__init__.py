"""Collective memory backends: where workers read the best and publish results.

``protocol`` defines what a worker needs; ``sqlite`` is the embedded solo-mode backend
and ``ensue_client`` the network one (the public Ensue network or our hub).
:func:`open_memory` builds the backend the config names, unopened: use it with
``async with``; :func:`memory_exists` lets read-only commands avoid creating one.
"""

from __future__ import annotations

from autoresearchd.config import UNSET_PATH, Config
from autoresearchd.errors import ConfigError
from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.memory.ensue_client.identity import read_api_key
from autoresearchd.memory.protocol import BestChange, CollectiveMemory, Note, PublishOutcome
from autoresearchd.memory.sqlite import SqliteMemory

__all__ = [
    "BestChange",
    "CollectiveMemory",
    "EnsueMemory",
    "Note",
    "PublishOutcome",
    "SqliteMemory",
    "memory_exists",
    "open_memory",
]


def open_memory(config: Config) -> CollectiveMemory:
    """The collective memory ``config.memory`` selects, not yet opened."""
    memory = config.memory
    if memory.backend == "sqlite":
        return SqliteMemory(memory.path)
    for key, missing in (
        ("org", not memory.org),
        ("api_key_file", memory.api_key_file == UNSET_PATH),
    ):
        if missing:
            raise ConfigError(
                'expected a value when backend = "ensue"',
                path=str(config.source),
                key=f"memory.{key}",
            )
    api_key = read_api_key(memory.api_key_file)
    return EnsueMemory(
        memory.url,
        memory.org,
        api_key,
        primary_track=memory.org_track or config.experiment.track,
        org_track_declared=bool(memory.org_track),
    )


def memory_exists(config: Config) -> bool:
    """False when the configured memory has certainly stored nothing: no SQLite file yet.

    Commands that only read use this to avoid creating the state folder and an empty
    database. A network memory always exists as far as this check can tell.
    """
    return config.memory.backend != "sqlite" or config.memory.path.exists()
