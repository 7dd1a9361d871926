"""The write algorithm's decisions, as pure functions both dialects call.

A create or an update is a few statements with a decision between each: is the key free
(or there, at the version asked for)? Does the write policy refuse? Did the guarded
``INSERT``/``UPDATE`` change a row, or did a concurrent writer get there first? Each
answer is one function here, from what the transaction saw to the :class:`WriteOutcome`
that ends the write (refused, or lost to a conflict), or None to go on and write. The
dialects keep only their statements, so SQLite and PostgreSQL cannot decide differently.
"""

from __future__ import annotations

from autoresearchd.hub.storage.protocol import (
    REASON_EXISTS,
    REASON_NOT_FOUND,
    REASON_REFUSED,
    REASON_VERSION,
    Evidence,
    KeyWrite,
    WriteOutcome,
    WritePolicy,
)
from autoresearchd.hub.storage.rows import Memory


def create_blocked(existing_version: int | None) -> WriteOutcome | None:
    """A create of a key stored at ``existing_version`` (None: absent): refused, or None."""
    if existing_version is None:
        return None
    return WriteOutcome(reason=REASON_EXISTS, current_version=existing_version)


def update_target(current: Memory | None, if_match: int | None) -> Memory | WriteOutcome:
    """An update of ``current`` (None: absent) expected at ``if_match`` (None: any): the
    row it writes over, or the outcome that ends it."""
    if current is None:
        return WriteOutcome(reason=REASON_NOT_FOUND)
    if if_match is not None and if_match != current.version:
        return WriteOutcome(reason=REASON_VERSION, current_version=current.version)
    return current


def policy_verdict(
    policy: WritePolicy, current: Memory | None, evidence: Evidence
) -> WriteOutcome | None:
    """Run ``policy`` (pure) on the row (None on create) and the evidence the write's
    transaction read: the refusal it gives, or None when it allows the write."""
    refusal = policy.check(current, evidence)
    if not refusal:
        return None
    return WriteOutcome(reason=REASON_REFUSED, detail=refusal)


def created(inserted: bool) -> WriteOutcome:
    """After the guarded ``INSERT``: version 1, or the key a concurrent create took first."""
    if not inserted:
        return WriteOutcome(reason=REASON_EXISTS, current_version=1)
    return WriteOutcome(version=1)


def updated(current: Memory, changed: bool) -> WriteOutcome:
    """After the compare-and-set on ``current.version``: the next version, or the conflict
    of a writer that moved the row since it was read."""
    if not changed:
        return WriteOutcome(reason=REASON_VERSION, current_version=current.version)
    return WriteOutcome(version=current.version + 1)


def new_owner(write: KeyWrite, current: Memory) -> str:
    """The owner after ``write`` updates ``current``."""
    takes = write.policy is not None and write.policy.takes_ownership
    return write.agent.name if takes else current.owner
