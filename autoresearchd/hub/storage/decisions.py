"""The write algorithm's decisions, as pure functions both dialects call.

A create or an update is a few statements with a decision between each: is the key free
(or there, at the version asked for; a create whose policy needs no evidence asks the
``INSERT`` itself, :func:`reads_first`)? Does the write policy refuse? Did the guarded
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
    Needs,
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


def reads_first(policy: WritePolicy | None) -> bool:
    """Whether a create reads its key before its guarded ``INSERT``: only under a policy
    that needs evidence, which is not worth reading for a key that is there. Any other
    create inserts at once, and reads the key's version only where the ``INSERT`` found
    it there or the policy refused (:func:`refused_unread`): ``exists`` comes before a
    refusal either way, so the outcome is the one a read first would have given."""
    return policy is not None and policy.needs != Needs()


def refused_unread(policy: WritePolicy | None) -> WriteOutcome | None:
    """The verdict on a create of a policy that needs no evidence; None: allowed."""
    return None if policy is None else policy_verdict(policy, None, Evidence())


def created(inserted: bool, existing_version: int | None = None) -> WriteOutcome:
    """After the guarded ``INSERT``: version 1, or ``exists`` at the version read after it
    (1 when the row is gone again by then, removed by a concurrent delete)."""
    if not inserted:
        return WriteOutcome(reason=REASON_EXISTS, current_version=existing_version or 1)
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
