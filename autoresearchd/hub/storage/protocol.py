"""What the hub needs from its database: the :class:`HubStore` Protocol and the writes it takes.

Every guarantee the hub gives lives in the database, never in process memory, so both
dialects (:mod:`~autoresearchd.hub.storage.sqlite`, :mod:`~autoresearchd.hub.storage.postgres`)
implement this one Protocol and several hub replicas can share one PostgreSQL database. A
write carries a :class:`WritePolicy`: a pure check run on the row the write's transaction
read and the :class:`Evidence` the policy asked for (:class:`Needs`); the store answers a
:class:`WriteOutcome`. Several reads and writes apply atomically as one :data:`Plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from autoresearchd.hub.storage.rows import Agent, AuditEntry, Hit, Memory, NewMemory, ResultRow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Needs:
    """What a write policy must see besides the row it writes, read in the same transaction.

    ``result_key``: the indexed result at that key; ``replicates_of``: ``(org, sha256)``,
    every indexed result of that source; ``sibling_key``: another stored key.
    """

    result_key: str = ""
    replicates_of: tuple[str, str] | None = None
    sibling_key: str = ""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The rows :class:`Needs` asked for, as the write's transaction sees them."""

    result: ResultRow | None = None
    replicates: tuple[ResultRow, ...] = ()
    sibling: Memory | None = None


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """Why a write is refused (a reason) or None to allow it, given the stored row (None
    on create) and the evidence ``needs`` names. ``check`` must be pure."""

    check: Callable[[Memory | None, Evidence], str | None]
    needs: Needs = Needs()
    #: The writer becomes the key's owner: a claim taken over is the new holder's to release.
    takes_ownership: bool = False


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """``version`` is set on success; otherwise ``reason`` is one of the ``REASON_*`` names."""

    version: int | None = None
    reason: str = ""
    current_version: int | None = None
    detail: str = ""


REASON_NOT_FOUND = "not_found"
REASON_EXISTS = "exists"
REASON_VERSION = "version_mismatch"
REASON_REFUSED = "refused"


class HubStore(Protocol):
    """What the hub needs from its database. This is a Protocol: implement, don't subclass."""

    async def create_org(self, name: str, now: float) -> bool: ...

    async def org_exists(self, name: str) -> bool: ...

    async def register(self, agent: Agent, key_hash: str, code_hash: str, now: float) -> bool:
        """Store a new agent (with ``agent.email``); False when the name or key is taken."""
        ...

    async def verify(self, name: str, code_hash: str, now: float) -> bool:
        """Mark ``name`` verified if ``code_hash`` is its code's hash; True if it now is."""
        ...

    async def forget(self, name: str, key_hash: str, now: float) -> bool:
        """Drop an agent that is still unverified (its email could not be sent)."""
        ...

    async def agent_for(self, key_hash: str) -> Agent | None: ...

    async def create(
        self,
        agent: Agent,
        item: NewMemory,
        now: float,
        *,
        policy: WritePolicy | None = None,
        result: ResultRow | None = None,
        detail: str = "",
    ) -> WriteOutcome:
        """Create-if-absent after ``policy`` allowed it; index ``result`` with it."""
        ...

    async def get(self, key_names: Sequence[str]) -> list[Memory | None]:
        """The keys, read in one snapshot, in the order asked."""
        ...

    async def update(
        self,
        agent: Agent,
        item: NewMemory,
        if_match: int | None,
        policy: WritePolicy,
        now: float,
        *,
        detail: str = "",
    ) -> WriteOutcome:
        """Compare-and-set one key after ``policy`` allowed the write."""
        ...

    async def list_keys(self, prefix: str, limit: int) -> list[Memory]:
        """Keys under ``prefix`` in creation order, oldest first."""
        ...

    async def search(self, query: str, prefix: str, limit: int) -> list[Hit]:
        """Keys under ``prefix`` ranked by text relevance; scores in [0, 1]."""
        ...

    async def history(self, key_name: str, limit: int) -> list[AuditEntry]:
        """The audited creates and updates of one key, newest first."""
        ...

    async def delete(self, agent: Agent, key_name: str, now: float) -> bool:
        """Delete ``key_name`` if ``agent`` owns it (audited); False when it does not."""
        ...

    async def mark_verified(self, name: str, now: float) -> bool:
        """Verify agent ``name`` without its code (an invite vouches for it)."""
        ...

    async def select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of one read-only query (``?`` placeholders), in one snapshot."""
        ...

    async def revoke(self, name: str, now: float) -> bool:
        """Make ``name``'s API key unusable, for every hub process on this database at
        once (PostgreSQL replicas: once notified); False when it has no live key."""
        ...

    async def transact(self, plan: Plan[T]) -> T:
        """Run ``plan``'s steps in one write transaction and return its result."""
        ...

    async def watch(self) -> None:
        """Keep what this store caches true while the hub serves (until cancelled); a
        store that needs nothing for it returns at once."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class KeyWrite:
    """One create or update of a key, as both dialects receive it."""

    agent: Agent
    item: NewMemory
    now: float
    policy: WritePolicy | None
    result: ResultRow | None
    detail: str


@dataclass(frozen=True, slots=True)
class ReadKeys:
    """A step of a :data:`Plan`: the stored rows of ``key_names`` (None where absent), in
    order; ``lock`` holds them until the plan's transaction ends (PostgreSQL's ``FOR
    UPDATE``; in SQLite the plan holds the database's one write lock anyway)."""

    key_names: tuple[str, ...]
    lock: bool = False


@dataclass(frozen=True, slots=True)
class CreateKey:
    """A step of a :data:`Plan`: create-if-absent under ``write.policy``; a WriteOutcome."""

    write: KeyWrite


@dataclass(frozen=True, slots=True)
class UpdateKey:
    """A step of a :data:`Plan`: compare-and-set under ``write.policy``; a WriteOutcome."""

    write: KeyWrite
    if_match: int | None


Step = ReadKeys | CreateKey | UpdateKey
#: Several reads and writes applied in one transaction: a generator that yields each
#: :data:`Step` and is sent its answer (a list of Memory | None for a read, a WriteOutcome
#: for a write); what it returns is the plan's result. Plans hold no I/O of their own, so
#: both stores run the same plan, SQLite on its writer thread and PostgreSQL on the loop.
Plan = Generator[Step, Any, T]
