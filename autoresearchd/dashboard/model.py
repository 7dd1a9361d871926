"""What the dashboard shows, as plain rows, and the Protocol of the stores it reads them from.

:class:`DashboardSource` is what a page needs from a store: the hub's database
(:mod:`autoresearchd.dashboard.hub_source`) and the solo daemon's SQLite memory
(:mod:`autoresearchd.dashboard.memory_source`) both implement it. Every list is bounded
and newest first; a :class:`Page` carries the cursor of the next (older) page, so a page
deep in the history costs what the first one does. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

#: The most rows any list returns at once.
MAX_PAGE = 200
#: The most chart points one series returns (the newest); the chart draws each of them.
MAX_POINTS = 3000
NOTE_KINDS = ("hypotheses", "insights")


@dataclass(frozen=True, slots=True)
class Filters:
    """What the recent results are narrowed to; an empty field does not narrow."""

    agent: str = ""
    status: str = ""
    tier: str = ""
    proposer: str = ""
    track: str = ""

    def as_query(self) -> dict[str, str]:
        """The non-empty fields, as the query parameters that select them."""
        pairs = (
            ("agent", self.agent),
            ("status", self.status),
            ("tier", self.tier),
            ("proposer", self.proposer),
            ("track", self.track),
        )
        return {name: value for name, value in pairs if value}


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """Where a page of results ends: rows strictly older than ``(at, key)`` come next."""

    at: float
    key: str

    def text(self) -> str:
        return f"{self.at!r}~{self.key}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor :meth:`text` wrote, or None for anything else."""
        at, sep, key = text.partition("~")
        try:
            value = float(at)
        except ValueError:
            return None
        return cls(value, key) if sep and key else None


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One result as lists show it; ``key`` names it in URLs."""

    key: str
    result_id: str
    agent: str
    track: str
    tier: str
    status: str
    provisional: bool
    val_bpb: float | None
    description: str
    proposer: str
    at: float
    duration_s: float
    seed: int | None
    sha256: str
    parent_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "id": self.result_id,
            "agent": self.agent,
            "track": self.track,
            "tier": self.tier,
            "status": self.status,
            "provisional": self.provisional,
            "val_bpb": self.val_bpb,
            "description": self.description,
            "proposer": self.proposer,
            "at": self.at,
            "duration_s": self.duration_s,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class Page:
    rows: tuple[ResultRow, ...]
    next: Cursor | None


@dataclass(frozen=True, slots=True)
class Standing:
    """One agent's line on the leaderboard."""

    agent: str
    improvements: int
    keeps: int
    runs: int
    gpu_hours: float
    confirmations: int

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "improvements": self.improvements,
            "keeps": self.keeps,
            "runs": self.runs,
            "gpu_hours": round(self.gpu_hours, 3),
            "confirmations": self.confirmations,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One move of the best: when, to what, by whom, with which change."""

    at: float
    agent: str
    val_bpb: float | None
    description: str
    sha256: str
    result_id: str


@dataclass(frozen=True, slots=True)
class NoteRow:
    """A hypothesis or an insight as posted; ``status`` is the note's own (``open``, ...)."""

    kind: str
    agent: str
    title: str
    text: str
    status: str
    at: float


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """A claim in flight: someone is running this source now."""

    agent: str
    track: str
    sha256: str
    claimed_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One local device's live state (solo mode only), from the daemon's control socket."""

    device: str
    name: str
    state: str
    experiment: str
    time_left_s: float | None


@dataclass(frozen=True, slots=True)
class Detail:
    """One result with what its page shows beyond the row."""

    row: ResultRow
    record: Mapping[str, Any]
    train_py: str
    parent_train_py: str | None
    lineage: tuple[ResultRow, ...] = field(default_factory=tuple)


class DashboardSource(Protocol):
    """What the dashboard reads from a store. This is a Protocol: implement, don't subclass."""

    async def tracks(self) -> list[str]:
        """The tracks that have results."""
        ...

    async def standings(self, limit: int) -> list[Standing]:
        """Agents by confirmed improvements, then keeps, then runs."""
        ...

    async def results(self, filters: Filters, before: Cursor | None, limit: int) -> Page:
        """Results newest first, older than ``before``; ``limit`` at most :data:`MAX_PAGE`."""
        ...

    async def detail(self, key: str) -> Detail | None:
        """One result, its source, its parent's source and its lineage."""
        ...

    async def points(self, track: str, tier: str, limit: int) -> list[ResultRow]:
        """The newest ``limit`` results of a track (of one tier when given), oldest first."""
        ...

    async def lineage(self, track: str, limit: int) -> list[Step]:
        """How the best of ``track`` moved, newest first."""
        ...

    async def notes(self, kind: str, limit: int) -> list[NoteRow]:
        """Hypotheses or insights, newest first."""
        ...

    async def claims(self, now: float, limit: int) -> list[ClaimRow]:
        """Live claims: what is being run now, newest first."""
        ...

    async def devices(self) -> list[DeviceRow]:
        """This machine's devices (solo mode); a hub has none."""
        ...


def bounded(limit: int, most: int = MAX_PAGE) -> int:
    """``limit`` clamped into ``1..most``."""
    return max(1, min(limit, most))


async def walk_lineage(
    row: ResultRow, by_sha: Callable[[str], Awaitable[ResultRow | None]], most: int
) -> list[ResultRow]:
    """``row``'s ancestors by ``parent_sha256``, nearest first, at most ``most``."""
    chain: list[ResultRow] = []
    seen = {row.sha256}
    sha = row.parent_sha256
    while sha and sha not in seen and len(chain) < most:
        parent = await by_sha(sha)
        if parent is None:
            break
        chain.append(parent)
        seen.add(sha)
        sha = parent.parent_sha256
    return chain
