"""Whether the collective memory answers, as ``autoresearchd status`` reports it.

The daemon wraps its memory in a :class:`TrackedMemory`, which passes every call through
and notes in a :class:`Connectivity` when the memory last answered and how it last failed.
The status snapshot shows that record; nothing here retries or changes what a call returns.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.protocol import BestChange, CollectiveMemory, Note, PublishOutcome
from autoresearchd.models import Best, Result

_T = TypeVar("_T")


@dataclass
class Connectivity:
    """When the collective memory last answered, and its last failure."""

    backend: str
    url: str = ""
    last_ok_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None

    @property
    def reachable(self) -> bool | None:
        """None before the first call; else whether the latest call succeeded."""
        if self.last_ok_at is None and self.last_error_at is None:
            return None
        return (self.last_ok_at or 0.0) >= (self.last_error_at or 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "url": self.url,
            "reachable": self.reachable,
            "last_ok_at": self.last_ok_at,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class TrackedMemory:
    """A collective memory that notes, in a :class:`Connectivity`, whether calls succeed."""

    def __init__(self, inner: CollectiveMemory, connectivity: Connectivity) -> None:
        self.inner = inner
        self.connectivity = connectivity

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def _track(self, call: Callable[[], Awaitable[_T]]) -> _T:
        try:
            value = await call()
        except MemoryBackendError as exc:
            self.connectivity.last_error = str(exc)
            self.connectivity.last_error_at = time.time()
            raise
        self.connectivity.last_ok_at = time.time()
        return value

    async def get_best(self, track: str, tier: str | None = None) -> Best | None:
        return await self._track(lambda: self.inner.get_best(track, tier))

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        return await self._track(
            lambda: self.inner.claim(track, sha256, agent_id, ttl_s, description)
        )

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        await self._track(lambda: self.inner.release(track, sha256, agent_id))

    async def publish(self, result: Result) -> PublishOutcome:
        return await self._track(lambda: self.inner.publish(result))

    async def best_history(
        self, track: str, tier: str | None = None, limit: int | None = 100
    ) -> list[BestChange]:
        return await self._track(lambda: self.inner.best_history(track, tier, limit))

    async def results(self, track: str | None = None, limit: int | None = 100) -> list[Result]:
        return await self._track(lambda: self.inner.results(track, limit))

    async def was_run(self, track: str, sha256: str) -> bool:
        return await self._track(lambda: self.inner.was_run(track, sha256))

    async def put_note(self, kind: str, note: Note) -> bool:
        return await self._track(lambda: self.inner.put_note(kind, note))

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        return await self._track(lambda: self.inner.notes(kind, limit))
