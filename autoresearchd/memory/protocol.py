"""The collective-memory Protocol every backend implements.

Its contract is written in docs/architecture.md ("Collective memory"). This module holds
only the interface and its small value types (what publishing did, where a backend is in
its life); the plain records it trades in (:class:`Note`, :class:`BestChange`) live in
:mod:`autoresearchd.models`, since proposers read them too, and are re-exported here for
the backends. A backend is an async context manager; its methods are safe to call
concurrently from many workers. Every backend must pass ``tests/memory/conformance.py``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

# Re-exported: backends and their callers know these records as part of the protocol.
from autoresearchd.models import Best, Result
from autoresearchd.models import BestChange as BestChange
from autoresearchd.models import Note as Note


class MemoryState(enum.Enum):
    """Where a backend is in its life: it opens once and closes once."""

    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What publishing one result did.

    ``created`` is False when the result id was already stored (an idempotent replay).
    ``best_improved`` lists the scopes whose best moved: ``"track"`` and/or the tier name.
    """

    created: bool
    best_improved: tuple[str, ...] = ()


class CollectiveMemory(Protocol):
    """What workers need from a collective memory. This is a Protocol: implement, don't subclass."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def get_best(self, track: str, tier: str | None = None) -> Best | None:
        """The best of ``track``; of one VRAM tier when ``tier`` is given."""
        ...

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        """Atomically claim a candidate. True if we now hold it (or already did).

        A claim by another agent blocks until it expires after ``ttl_s`` seconds.
        ``description`` (the candidate's) lets a network memory tell other kinds of client
        what is claimed, and check their claims of the same experiment.
        """
        ...

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        """Drop our claim; a no-op if we do not hold it."""
        ...

    async def publish(self, result: Result) -> PublishOutcome:
        """Store a result idempotently by its id.

        A ``keep`` result whose ``best_bpb`` beats the current best moves the best of its
        track and of its tier, atomically with storing it.
        """
        ...

    async def best_history(
        self, track: str, tier: str | None = None, limit: int | None = 100
    ) -> list[BestChange]:
        """Every move of the best of ``track`` (of one tier when given), newest first."""
        ...

    async def results(self, track: str | None = None, limit: int | None = 100) -> list[Result]:
        """Results, newest first: every track when ``track`` is None, all when ``limit`` is None."""
        ...

    async def was_run(self, track: str, sha256: str) -> bool:
        """True if any result with this source hash exists or a live claim holds it."""
        ...

    async def put_note(self, kind: str, note: Note) -> bool:
        """Store a hypothesis or insight (``kind`` is ``hypotheses`` or ``insights``).

        Returns False if the key already exists.
        """
        ...

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        """Hypotheses or insights, newest first."""
        ...
