"""Agents by API key hash, held in process memory while the database says they still hold.

Authentication reads the agent of every request's key, so each hub process keeps what it
read. An entry lives until something about agents changes: a verification, a forgotten
registration or a revoked key, by any process. The SQLite store learns of such a change
from a counter those writes bump in their own transaction, read on every lookup (one
statement, no thread hand-off); the PostgreSQL store from a notification those writes send
on commit, which every replica listens for. Unknown keys are never kept: a key registered
on another replica must work at once.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")

#: Past this many keys the cache starts afresh rather than grow without bound.
MAX_ENTRIES = 100_000


class KeyCache(Generic[V]):
    """Values by key hash. ``generation`` changes on every :meth:`clear`, so a lookup that
    began before a change cannot store what it read after the change emptied the cache."""

    def __init__(self, max_entries: int = MAX_ENTRIES, *, enabled: bool = True) -> None:
        self._entries: dict[str, V] = {}
        self._max = max_entries
        self._epoch: object = None
        self.generation = 0
        self.enabled = enabled

    def get(self, key_hash: str) -> V | None:
        return self._entries.get(key_hash) if self.enabled else None

    def put(self, key_hash: str, value: V, generation: int) -> None:
        """Keep ``value`` unless the cache was cleared since ``generation`` was read."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key_hash] = value

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1

    def seen(self, epoch: object) -> None:
        """The database's change marker as a lookup read it: a new one empties the cache."""
        if epoch != self._epoch:
            self.clear()
            self._epoch = epoch
