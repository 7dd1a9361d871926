"""The store conformance suite: every HubStore guarantee, on SQLite and on PostgreSQL.

Each test runs once per store (the ``database`` fixture) and speaks only the
:class:`~autoresearchd.hub.storage.protocol.HubStore` Protocol, except where it opens the database
itself to try to rewrite the audit log behind the store's back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import psycopg
import pytest

from autoresearchd.hub.policy import Rules, write_policy
from autoresearchd.hub.storage.auto import is_postgres_url, open_store
from autoresearchd.hub.storage.protocol import (
    REASON_EXISTS,
    REASON_NOT_FOUND,
    REASON_REFUSED,
    REASON_VERSION,
    Evidence,
    HubStore,
    Needs,
    WriteOutcome,
    WritePolicy,
)
from autoresearchd.hub.storage.rows import Agent, Memory, NewMemory, ResultRow
from autoresearchd.hub.storage.shared_sql import MAX_QUERY_WORDS

pytestmark = pytest.mark.anyio

ALICE = Agent("alice", verified=True)
BOB = Agent("bob", verified=True)
ANYONE = WritePolicy(lambda current, evidence: None)
WRITERS = 24


@pytest.fixture
async def store(database: Path | str) -> AsyncIterator[HubStore]:
    store = await open_store(database)
    await store.create_org("o", 0.0)
    yield store
    await store.close()


def text(value: str) -> NewMemory:
    return NewMemory("@o/insights/k", value, False, "a note")


async def test_create_is_create_if_absent_with_one_winner_among_concurrent_writers(
    store: HubStore,
) -> None:
    outcomes: dict[int, WriteOutcome] = {}

    async def create(i: int) -> None:
        outcomes[i] = await store.create(ALICE, text(f"v{i}"), float(i))

    async with anyio.create_task_group() as tg:
        for i in range(WRITERS):
            tg.start_soon(create, i)
    winners = [i for i, o in outcomes.items() if o.version == 1]
    assert len(winners) == 1 and len(outcomes) == WRITERS
    assert {o.reason for o in outcomes.values() if o.version is None} == {REASON_EXISTS}
    (stored,) = await store.get(["@o/insights/k"])
    assert stored is not None and stored.version == 1 and stored.owner == "alice"
    assert stored.value == f"v{winners[0]}"


async def test_update_is_compare_and_set_with_one_winner_per_version(store: HubStore) -> None:
    await store.create(ALICE, text("v0"), 0.0)
    outcomes = []

    async def update(i: int) -> None:
        outcomes.append(await store.update(ALICE, text(f"v{i}"), 1, ANYONE, float(i)))

    async with anyio.create_task_group() as tg:
        for i in range(WRITERS):
            tg.start_soon(update, i)
    assert [o.version for o in outcomes].count(2) == 1
    losers = [o for o in outcomes if o.version is None]
    assert {(o.reason, o.current_version) for o in losers} == {(REASON_VERSION, 2)}
    assert (await store.update(ALICE, text("x"), None, ANYONE, 9.0)).version == 3
    missing = NewMemory("@o/insights/none", "x", False)
    assert (await store.update(ALICE, missing, None, ANYONE, 9.0)).reason == REASON_NOT_FOUND


async def test_policies_see_the_row_as_committed_so_a_minimum_is_never_passed(
    store: HubStore,
) -> None:
    """Writers that lower a number only when they beat it end at the true minimum."""
    key = "@o/insights/min"
    await store.create(ALICE, NewMemory(key, "100", False), 0.0)

    def lower(value: int) -> WritePolicy:
        def check(current: Memory | None, evidence: Evidence) -> str | None:
            stored = int(current.value) if current else 1000
            return None if value < stored else f"{value} does not beat {stored}"

        return WritePolicy(check)

    async def write(value: int) -> None:
        # No if_match: only the policy, run on the locked row, guards the minimum.
        await store.update(ALICE, NewMemory(key, str(value), False), None, lower(value), 1.0)

    values = list(range(WRITERS, 0, -1))  # later writers beat earlier ones
    async with anyio.create_task_group() as tg:
        for value in values:
            tg.start_soon(write, value)
    (stored,) = await store.get([key])
    assert stored is not None and int(stored.value) == min(values)


async def test_an_agent_may_update_only_its_own_keys(store: HubStore) -> None:
    await store.create(ALICE, text("mine"), 0.0)
    policy = write_policy(BOB, "@o/insights/k", "his", None, 1.0, Rules())
    refused = await store.update(BOB, text("his"), None, policy, 1.0)
    assert refused.reason == REASON_REFUSED and "belongs to alice" in refused.detail
    mine = write_policy(ALICE, "@o/insights/k", "again", None, 1.0, Rules())
    assert (await store.update(ALICE, text("again"), 1, mine, 1.0)).version == 2


async def test_a_refused_create_stores_nothing(store: HubStore) -> None:
    no = WritePolicy(lambda current, evidence: "no")
    assert (await store.create(ALICE, text("x"), 0.0, policy=no)).reason == REASON_REFUSED
    assert await store.get(["@o/insights/k"]) == [None]
    assert await store.history("@o/insights/k", 10) == []


async def test_a_create_of_a_stored_key_is_exists_at_its_version_before_any_refusal(
    store: HubStore, database: Path | str
) -> None:
    """Whether or not its policy reads evidence, a create of a key that is there answers
    ``exists`` at the key's version, even where the policy would refuse it, and writes
    nothing (not even to the audit log)."""
    await store.create(ALICE, text("a"), 0.0)
    await store.update(ALICE, text("b"), 1, ANYONE, 1.0)
    no = WritePolicy(lambda current, evidence: "no")
    looks = WritePolicy(lambda current, evidence: None, Needs(sibling_key="@o/insights/s"))
    refuses_after_looking = WritePolicy(no.check, looks.needs)
    for policy in (None, ANYONE, no, looks, refuses_after_looking):
        outcome = await store.create(BOB, text("c"), 2.0, policy=policy)
        assert outcome == WriteOutcome(reason=REASON_EXISTS, current_version=2)
    (stored,) = await store.get(["@o/insights/k"])
    assert stored is not None and (stored.value, stored.owner) == ("b", "alice")
    assert len(audit_rows(database, "@o/insights/k")) == 2
    free = NewMemory("@o/insights/free", "x", False)
    refused = await store.create(BOB, free, 2.0, policy=refuses_after_looking)
    assert refused == WriteOutcome(reason=REASON_REFUSED, detail="no")


def audit_rows(database: Path | str, key: str) -> list[tuple[object, ...]]:
    query = "SELECT agent, action, key_name, version FROM audit WHERE key_name = "
    if is_postgres_url(database):
        with psycopg.connect(str(database)) as conn:
            return list(conn.execute((query + "%s ORDER BY seq").encode(), (key,)).fetchall())
    with sqlite3.connect(database) as conn:
        return conn.execute(query + "? ORDER BY seq", (key,)).fetchall()


def tamper(database: Path | str, statement: str) -> None:
    """Run ``statement`` on the database directly, as an intruder with a login would."""
    if is_postgres_url(database):
        with psycopg.connect(str(database), autocommit=True) as conn:
            conn.execute(statement.encode())
        return
    db = sqlite3.connect(database)
    try:
        db.execute(statement)
    finally:
        db.close()


async def test_every_write_is_audited_in_an_append_only_log(
    store: HubStore, database: Path | str
) -> None:
    await store.create(ALICE, text("a"), 1.0, detail="first")
    await store.update(ALICE, text("b"), 1, ANYONE, 2.0, detail="second")
    key = "@o/insights/k"
    assert audit_rows(database, key) == [
        ("alice", "create", key, 1),
        ("alice", "update", key, 2),
    ]
    history = await store.history(key, 10)
    assert [(e.action, e.version, e.detail, e.at) for e in history] == [
        ("update", 2, "second", 2.0),
        ("create", 1, "first", 1.0),
    ]
    for statement in ("UPDATE audit SET agent = 'x'", "DELETE FROM audit"):
        with pytest.raises((sqlite3.IntegrityError, psycopg.Error), match="append-only"):
            tamper(database, statement)
    assert len(audit_rows(database, key)) == 2


async def test_results_are_indexed_with_their_record_and_read_as_evidence(
    store: HubStore,
) -> None:
    rows = [
        ResultRow(
            f"@o/results/r{i}", "o", "alice", True, f"r{i}", "t", "sha", i, "keep", False, 1.0 + i
        )
        for i in range(3)
    ]
    for row in rows:
        await store.create(ALICE, NewMemory(row.key_name, "{}", False), 1.0, result=row)
    seen: list[Evidence] = []

    def look(current: Memory | None, evidence: Evidence) -> str | None:
        seen.append(evidence)
        return None

    policy = WritePolicy(look, Needs("@o/results/r1", ("o", "sha"), "@o/results/r2"))
    await store.create(ALICE, NewMemory("@o/insights/e", "x", False), 2.0, policy=policy)
    (evidence,) = seen
    assert evidence.result == rows[1] and evidence.replicates == tuple(rows)
    assert evidence.sibling is not None and evidence.sibling.key_name == "@o/results/r2"


async def test_get_reads_keys_in_the_order_asked(store: HubStore) -> None:
    for name in ("b", "a"):
        await store.create(ALICE, NewMemory(f"@o/k/{name}", name, False), 0.0)
    found = await store.get(["@o/k/a", "@o/k/none", "@o/k/b"])
    assert [m.value if m else None for m in found] == ["a", None, "b"]


async def test_list_keys_takes_a_literal_prefix_in_creation_order(store: HubStore) -> None:
    for name in ("a_1", "a%2", "ab3", "a_4"):
        await store.create(ALICE, NewMemory(f"@o/k/{name}", "x", False), 0.0)
    assert [m.key_name for m in await store.list_keys("@o/k/a_", 10)] == ["@o/k/a_1", "@o/k/a_4"]
    assert [m.key_name for m in await store.list_keys("@o/k/a%", 10)] == ["@o/k/a%2"]
    assert len(await store.list_keys("@o/k/", 3)) == 3


async def test_a_prefix_tells_case_apart_in_listings_and_searches(store: HubStore) -> None:
    """A key under ``@o/RESULTS/`` is not under ``@o/results/``: on SQLite, whose ``LIKE``
    ignores case, a listing showed unvalidated text among the write-once results."""
    for key in ("@o/RESULTS/t/fake", "@o/results/t/real", "@o/resultsX", "@o/result"):
        await store.create(ALICE, NewMemory(key, "learning rate", False), 0.0)
    assert [m.key_name for m in await store.list_keys("@o/results/", 10)] == ["@o/results/t/real"]
    hits = await store.search("learning", "@o/results/", 10)
    assert [h.memory.key_name for h in hits] == ["@o/results/t/real"]
    assert len(await store.list_keys("", 10)) == 4


async def test_search_ranks_by_relevance_with_scores_in_0_1(store: HubStore) -> None:
    texts = {"a": "learning rate warmup", "b": "learning rate learning rate", "c": "depth"}
    for name, value in texts.items():
        await store.create(ALICE, NewMemory(f"@o/n/{name}", value, False), 0.0)
    await store.create(ALICE, NewMemory("@p/n/x", "learning rate", False), 0.0)
    hits = await store.search("learning rate", "@o/", 10)
    assert [h.memory.key_name for h in hits] == ["@o/n/b", "@o/n/a"]
    assert all(0.0 <= h.score <= 1.0 for h in hits) and hits[0].score > hits[1].score
    assert await store.search('" OR ( NEAR * :', "", 10) == []
    assert await store.search("", "", 10) == []
    updated = NewMemory("@o/n/c", "warmup depth", False)
    await store.update(ALICE, updated, None, ANYONE, 1.0)
    found = {h.memory.key_name for h in await store.search("warmup", "@o/", 10)}
    assert found == {"@o/n/a", "@o/n/c"}  # an update re-indexes the new text


async def test_search_under_a_prefix_finds_its_hits_though_better_ones_lie_outside_it(
    store: HubStore,
) -> None:
    """SQLite picks the best matches before it reads their keys: those it picks outside
    the prefix must not hide the ones under it, nor be counted against the limit."""
    await store.create_org("p", 0.0)
    for i in range(6):
        await store.create(ALICE, NewMemory(f"@p/n/{i}", "warmup " * 8, False), 0.0)
    for name in ("a", "b", "c"):
        await store.create(ALICE, NewMemory(f"@o/n/{name}", f"warmup {name}", False), 0.0)
    outside = await store.search("warmup", "@p/", 2)
    assert [hit.memory.key_name for hit in outside] == ["@p/n/0", "@p/n/1"]
    under = await store.search("warmup", "@o/", 2)
    assert [hit.memory.key_name for hit in under] == ["@o/n/a", "@o/n/b"]  # ties: oldest first
    assert len(await store.search("warmup", "@o/", 10)) == 3
    assert len(await store.search("warmup", "@", 10)) == 9


async def test_search_reads_the_first_max_query_words_words_in_both_stores(
    store: HubStore,
) -> None:
    """A query of 100,000 words held a SQLite thread for seconds; PostgreSQL read 32."""
    await store.create(ALICE, NewMemory("@o/n/a", "warmup", False), 0.0)
    padding = " ".join(f"w{i}" for i in range(MAX_QUERY_WORDS - 1))
    assert len(await store.search(f"{padding} warmup", "@o/", 10)) == 1
    assert await store.search(f"{padding} w{MAX_QUERY_WORDS} warmup", "@o/", 10) == []


async def test_agents_register_once_verify_with_their_code_and_unverified_may_be_forgotten(
    store: HubStore,
) -> None:
    nova = Agent("nova", email="n@example.org")
    assert await store.register(nova, "key1", "code1", 1.0)
    assert not await store.register(nova, "key2", "code2", 1.0)  # the name is taken
    assert not await store.register(Agent("other"), "key1", "c", 1.0)  # so is the key
    assert await store.agent_for("key1") == nova
    assert not await store.verify("nova", "wrong", 2.0)
    assert await store.verify("nova", "code1", 2.0) and await store.verify("nova", "code1", 3.0)
    assert await store.agent_for("key1") == Agent("nova", verified=True, email="n@example.org")
    assert not await store.forget("nova", "key1", 4.0)  # verified agents stay
    assert await store.register(Agent("temp"), "key3", "c", 1.0)
    assert await store.forget("temp", "key3", 4.0) and await store.agent_for("key3") is None


async def test_orgs_are_created_once(store: HubStore) -> None:
    assert not await store.create_org("o", 1.0)
    assert await store.create_org("q", 1.0) and await store.org_exists("q")
    assert not await store.org_exists("nope")


async def test_values_round_trip_exactly_and_binary_has_no_text(store: HubStore) -> None:
    value = json.dumps({"s": "ünï ✓ \\ ' \" %"})
    await store.create(ALICE, NewMemory("@o/k/t", value, False, "d"), 1.5)
    await store.create(ALICE, NewMemory("@o/k/b", "/w==", True), 1.5)
    text_row, binary = await store.get(["@o/k/t", "@o/k/b"])
    assert text_row is not None and (text_row.value, text_row.description) == (value, "d")
    assert (text_row.created_at, text_row.verified) == (1.5, True)
    assert binary is not None and binary.is_base64 and binary.text is None


async def test_search_finds_records_but_never_run_or_publish_markers(store: HubStore) -> None:
    idea = "raise the matrix learning rate to 0.05"
    for key in ("@o/claims/a", "@o/runs/t--abc", "@o/published/r--1", "@o/.hub/share"):
        await store.create(ALICE, NewMemory(key, json.dumps({"description": idea}), False), 0.0)
    found = await store.search(idea, "@o/", 10)
    assert [hit.memory.key_name for hit in found] == ["@o/claims/a"]
    # An update of a marker indexes nothing either.
    marker = NewMemory("@o/runs/t--abc", json.dumps({"note": idea}), False)
    assert (await store.update(ALICE, marker, 1, ANYONE, 1.0)).version == 2
    assert [hit.memory.key_name for hit in await store.search(idea, "@o/", 10)] == ["@o/claims/a"]
