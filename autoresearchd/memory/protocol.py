"""The collective-memory Protocol every backend implements (DESIGN.md, contract 4).

This module holds only the interface and its small value types. A backend is an async
context manager; its methods are safe to call concurrently from many workers. Every
backend must pass ``tests/memory/conformance.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from autoresearchd.models import Best, Result


@dataclass(frozen=True, slots=True)
class PublishOutcome:
    """What publishing one result did.

    ``created`` is False when the result id was already stored (an idempotent replay).
    ``best_improved`` lists the scopes whose best moved: ``"track"`` and/or the tier name.
    """

    created: bool
    best_improved: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Note:
    """A hypothesis or insight shared with the swarm (community record shape in ``value``)."""

    key: str
    agent_id: str
    value: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class BestChange:
    """One move of a best: when (by the memory's clock: the hub's for a hub), to what, by whom."""

    at: float
    agent_id: str
    val_bpb: float
    description: str
    train_py_sha256: str
    result_id: str


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
