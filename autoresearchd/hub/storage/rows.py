"""The hub's rows as plain data: agents, stored keys, indexed results and audit entries.

Both dialects build these from their rows (:mod:`~autoresearchd.hub.storage.shared_sql`
holds the column lists) and every layer above the store reads them. What search indexes of
a key (:func:`indexed`, :func:`search_text`) is decided here once, for both dialects.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoresearchd.ensue import values

#: How much of a description the ``results`` index keeps; the record keeps all of it.
INDEXED_DESCRIPTION_CHARS = 300
#: Org-relative prefixes that search never needs to find: run and publish markers (one per
#: result, and most of a publish's writes) and the hub's own rows.
UNINDEXED = ("runs/", "published/", ".hub/")


@dataclass(frozen=True, slots=True)
class Agent:
    """A registered agent; ``name`` is bound to its API key."""

    name: str
    is_admin: bool = False
    verified: bool = False
    email: str = ""


@dataclass(frozen=True, slots=True)
class Memory:
    """One stored key. ``value`` is exactly what was sent; ``is_base64`` says how to read it.

    ``verified`` says whether its writer was a verified agent when it was created.
    """

    key_name: str
    owner: str
    description: str
    value: str
    is_base64: bool
    version: int
    created_at: float
    updated_at: float
    verified: bool = False

    @property
    def text(self) -> str | None:
        """The value as text, or None when it is binary."""
        return decode_text(self.value, self.is_base64)


@dataclass(frozen=True, slots=True)
class NewMemory:
    key_name: str
    value: str
    is_base64: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    memory: Memory
    score: float


@dataclass(frozen=True, slots=True)
class ResultRow:
    """The indexed fields of one ``results/`` record; ``val_bpb`` is None unless finite."""

    key_name: str
    org: str
    agent: str
    verified: bool
    result_id: str
    track: str
    train_py_sha256: str
    seed: int | None
    status: str
    provisional: bool
    val_bpb: float | None
    #: Copied for the dashboard's lists and filters only; no write policy reads them.
    tier: str = ""
    proposer: str = ""
    description: str = ""
    duration_s: float = 0.0
    parent_sha256: str = ""

    def details(self) -> tuple[str, str, str, float, str]:
        """The values of ``shared_sql.DETAIL_COLUMNS``, in order."""
        description = self.description[:INDEXED_DESCRIPTION_CHARS]
        return (self.tier, self.proposer, description, self.duration_s, self.parent_sha256)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit row: who did what to which key, with the change's ``detail``."""

    at: float
    agent: str
    action: str
    key_name: str
    version: int | None
    detail: str


def decode_text(value: str, is_base64: bool) -> str | None:
    """A stored value's text; None when it is binary."""
    return values.decode(value, is_base64)


def indexed(key_name: str) -> bool:
    """Whether search indexes ``key_name``: every record but the markers of ``UNINDEXED``."""
    return not key_name.partition("/")[2].startswith(UNINDEXED)


def search_text(item: NewMemory) -> str:
    """What search indexes of a value: its text, with NULs (which PostgreSQL text cannot
    hold, though a base64 value may decode to them) as spaces; binary values index nothing."""
    return (decode_text(item.value, item.is_base64) or "").replace("\x00", " ")
