"""The write algorithm's decisions, each a pure function both dialects call, table by table."""

from __future__ import annotations

import pytest

from autoresearchd.hub.storage import decisions
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
from autoresearchd.hub.storage.rows import Agent, Memory, NewMemory

ROW = Memory("@o/best/metadata", "alice", "d", "{}", False, 3, 1.0, 2.0, True)
EVIDENCE = Evidence(sibling=ROW)


@pytest.mark.parametrize(
    ("existing_version", "expected"),
    [
        (None, None),  # the key is free: write
        (1, WriteOutcome(reason=REASON_EXISTS, current_version=1)),
        (7, WriteOutcome(reason=REASON_EXISTS, current_version=7)),
    ],
)
def test_a_create_goes_on_only_where_the_key_is_free(
    existing_version: int | None, expected: WriteOutcome | None
) -> None:
    assert decisions.create_blocked(existing_version) == expected


@pytest.mark.parametrize(
    ("current", "if_match", "expected"),
    [
        (None, None, WriteOutcome(reason=REASON_NOT_FOUND)),
        (None, 3, WriteOutcome(reason=REASON_NOT_FOUND)),
        (ROW, None, ROW),  # no version asked for: write over what is there
        (ROW, 3, ROW),
        (ROW, 2, WriteOutcome(reason=REASON_VERSION, current_version=3)),
        (ROW, 4, WriteOutcome(reason=REASON_VERSION, current_version=3)),
    ],
)
def test_an_update_writes_over_the_current_row_only_at_the_version_asked_for(
    current: Memory | None, if_match: int | None, expected: Memory | WriteOutcome
) -> None:
    assert decisions.update_target(current, if_match) == expected


def _policy(refusal: str | None, seen: list[tuple[Memory | None, Evidence]]) -> WritePolicy:
    def check(current: Memory | None, evidence: Evidence) -> str | None:
        seen.append((current, evidence))
        return refusal

    return WritePolicy(check)


@pytest.mark.parametrize(
    ("current", "refusal", "expected"),
    [
        (None, None, None),  # a create the policy allows
        (ROW, None, None),
        (ROW, "", None),  # an empty reason refuses nothing
        (None, "not yours", WriteOutcome(reason=REASON_REFUSED, detail="not yours")),
        (ROW, "not better", WriteOutcome(reason=REASON_REFUSED, detail="not better")),
    ],
)
def test_the_policy_sees_the_row_and_evidence_and_its_reason_refuses(
    current: Memory | None, refusal: str | None, expected: WriteOutcome | None
) -> None:
    seen: list[tuple[Memory | None, Evidence]] = []
    assert decisions.policy_verdict(_policy(refusal, seen), current, EVIDENCE) == expected
    assert seen == [(current, EVIDENCE)]


@pytest.mark.parametrize(
    ("inserted", "existing_version", "expected"),
    [
        (True, None, WriteOutcome(version=1)),
        (False, 4, WriteOutcome(reason=REASON_EXISTS, current_version=4)),  # it was there
        (False, None, WriteOutcome(reason=REASON_EXISTS, current_version=1)),  # gone again
    ],
)
def test_a_guarded_insert_that_inserted_nothing_found_the_key_there(
    inserted: bool, existing_version: int | None, expected: WriteOutcome
) -> None:
    assert decisions.created(inserted, existing_version) == expected


@pytest.mark.parametrize(
    ("policy", "reads_first"),
    [
        (None, False),
        (WritePolicy(lambda current, evidence: "no"), False),
        (WritePolicy(lambda current, evidence: None, Needs(sibling_key="@o/k")), True),
        (WritePolicy(lambda current, evidence: None, Needs(result_key="@o/results/r")), True),
        (WritePolicy(lambda current, evidence: None, Needs(replicates_of=("o", "s"))), True),
    ],
)
def test_only_a_create_whose_policy_needs_evidence_reads_its_key_first(
    policy: WritePolicy | None, reads_first: bool
) -> None:
    assert decisions.reads_first(policy) is reads_first


def test_a_policy_without_evidence_judges_a_create_on_nothing_read() -> None:
    seen: list[tuple[Memory | None, Evidence]] = []
    refused = decisions.refused_unread(_policy("no", seen))
    assert refused == WriteOutcome(reason=REASON_REFUSED, detail="no")
    assert seen == [(None, Evidence())]
    assert decisions.refused_unread(_policy(None, seen)) is None
    assert decisions.refused_unread(None) is None


@pytest.mark.parametrize(
    ("changed", "expected"),
    [
        (True, WriteOutcome(version=4)),
        (False, WriteOutcome(reason=REASON_VERSION, current_version=3)),  # moved meanwhile
    ],
)
def test_a_compare_and_set_that_changed_nothing_is_a_version_conflict(
    changed: bool, expected: WriteOutcome
) -> None:
    assert decisions.updated(ROW, changed) == expected


@pytest.mark.parametrize(
    ("policy", "owner"),
    [
        (None, "alice"),
        (WritePolicy(lambda current, evidence: None), "alice"),
        (WritePolicy(lambda current, evidence: None, takes_ownership=True), "bob"),
    ],
)
def test_only_a_policy_that_takes_ownership_moves_the_key_to_its_writer(
    policy: WritePolicy | None, owner: str
) -> None:
    write = KeyWrite(Agent("bob"), NewMemory(ROW.key_name, "{}", False), 5.0, policy, None, "")
    assert decisions.new_owner(write, ROW) == owner
