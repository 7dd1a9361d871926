"""Collective memory backends: where workers read the best and publish results.

``protocol`` defines what a worker needs; ``sqlite`` is the embedded solo-mode backend.
:func:`open_memory` builds the backend the config names, unopened: use it with
``async with``; :func:`memory_exists` lets read-only commands avoid creating one. The
``ensue`` backend is not available yet.
"""

from __future__ import annotations

from autoresearchd.config import Config
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.protocol import CollectiveMemory, Note, PublishOutcome
from autoresearchd.memory.sqlite import SqliteMemory

__all__ = [
    "CollectiveMemory",
    "Note",
    "PublishOutcome",
    "SqliteMemory",
    "memory_exists",
    "open_memory",
]


def open_memory(config: Config) -> CollectiveMemory:
    """The collective memory ``config.memory`` selects, not yet opened."""
    backend = config.memory.backend
    if backend == "sqlite":
        return SqliteMemory(config.memory.path)
    raise MemoryBackendError(
        f'the {backend} backend is not available yet; use backend = "sqlite"',
        backend=backend,
    )


def memory_exists(config: Config) -> bool:
    """False when the configured memory has certainly stored nothing: no SQLite file yet.

    Commands that only read use this to avoid creating the state folder and an empty
    database. A network memory always exists as far as this check can tell.
    """
    return config.memory.backend != "sqlite" or config.memory.path.exists()
