"""Our client on an org the community's clients use, driven by their recorded session.

The session (``tests/fixtures/community/session.json``: claim, verify, publish, upsert
bests, list, search, hypotheses, insights) is replayed onto a server that answers as the
public Ensue network does; then our client must read what their client wrote, write what
their client reads, block experiments they hold, answer either error shape cleanly, and
never move a best whose track it cannot confirm is its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from structlog.testing import capture_logs

from autoresearchd.memory import EnsueMemory, Note
from autoresearchd.models import Status, sha256_text
from tests.memory.community import (
    CommunityReader,
    Key,
    PublicNetwork,
    load_session,
    replay,
    session_now,
)
from tests.memory.conformance import FakeClock, make_result

pytestmark = pytest.mark.anyio

SESSION = load_session()
ORG = SESSION["org"]
NOW = session_now()
#: What we call the community's own track when we say so (``memory.org_track``).
THEIRS = "autoresearch-at-home"
STEPS = {step["note"]: step for step in SESSION["steps"]}
CLAIM0 = json.loads(STEPS["claim"]["arguments"]["items"][0]["text"])
CLAIM1 = json.loads(STEPS["a second agent claims, still running"]["arguments"]["items"][0]["text"])
RESULT0 = json.loads(STEPS["publish"]["arguments"]["items"][0]["text"])
SOURCE = RESULT0["train_py"]
#: Every field a community result carries (their client's ``result_data``).
COMMUNITY_RESULT_FIELDS = {
    "agent_id",
    "val_bpb",
    "memory_gb",
    "vram_tier",
    "vram_total_gb",
    "status",
    "commit",
    "description",
    "train_py",
    "repo_url",
    "branch",
    "commit_url",
    "completed_at",
    "delta_vs_best",
    "global_best_at_publish",
    "delta_vs_own_best",
    "agent_best_at_publish",
}


@pytest.fixture(params=["tool", "item"])
def network(request: pytest.FixtureRequest) -> Iterator[PublicNetwork]:
    """The org after the recorded session; an existing key is reported per ``param``."""
    network = PublicNetwork(ORG, exists_as=request.param)
    with httpx.Client(transport=network.transport(), base_url="http://ensue.test") as client:
        replay(lambda agent: client)
    network.calls.clear()
    yield network


@pytest.fixture
def reader(network: PublicNetwork) -> Iterator[CommunityReader]:
    with httpx.Client(transport=network.transport(), base_url="http://ensue.test") as client:
        yield CommunityReader(client, ORG)


def ours(
    network: PublicNetwork,
    track: str = THEIRS,
    *,
    declared: bool = True,
    clock: FakeClock | None = None,
) -> EnsueMemory:
    """Our client as ``memory.org_track = track`` (``declared``) or with none set."""
    return EnsueMemory(
        "http://ensue.test/",
        ORG,
        "key",
        primary_track=track,
        org_track_declared=declared,
        clock=clock or FakeClock(NOW),
        transport=network.transport(),
    )


def their_result_key() -> str:
    return str(STEPS["publish"]["arguments"]["items"][0]["key_name"]).split("/", 1)[1]


# --- reading what their client wrote -------------------------------------------------------


async def test_their_results_read_as_results_of_the_orgs_track(network: PublicNetwork) -> None:
    async with ours(network) as memory:
        (result,) = await memory.results(THEIRS)
        assert await memory.results("synthetic") == []
    assert result.id == their_result_key().removeprefix("results/")
    assert (result.agent_id, result.status, result.val_bpb) == ("gpu0", Status.KEEP, 0.9712)
    assert result.train_py == SOURCE and result.train_py_sha256 == sha256_text(SOURCE)
    assert result.completed_at == datetime.fromisoformat(RESULT0["completed_at"]).timestamp()
    assert (result.vram_tier, result.memory_gb) == ("xl", 79.6)
    assert result.metrics["peak_vram_mb"] == 45158.4 and "val_bpb" not in result.metrics


async def test_without_a_declared_org_track_their_records_are_of_the_org(
    network: PublicNetwork,
) -> None:
    async with ours(network, "synthetic", declared=False) as memory:
        (result,) = await memory.results()
        assert result.track == ORG
        assert await memory.results("synthetic") == []


async def test_their_best_is_verified_by_hashing_its_source(network: PublicNetwork) -> None:
    async with ours(network) as memory:
        best = await memory.get_best(THEIRS)
        tier = await memory.get_best(THEIRS, "xl")
    assert best is not None and tier is not None
    assert (best.val_bpb, best.agent_id, best.train_py) == (0.9712, "gpu0", SOURCE)
    assert best.train_py_sha256 == tier.train_py_sha256 == sha256_text(SOURCE)
    assert best.updated_at == datetime.fromisoformat(RESULT0["completed_at"]).timestamp()


async def test_a_torn_community_best_takes_the_source_its_metadata_carries(
    network: PublicNetwork,
) -> None:
    network.keys["best/train_py"].text = "MATRIX_LR = 0.9\n"  # a writer died between keys
    async with ours(network) as memory:
        best = await memory.get_best(THEIRS)
    assert best is not None and best.train_py == SOURCE


async def test_their_hypotheses_and_insights_are_read(network: PublicNetwork) -> None:
    async with ours(network) as memory:
        (hypothesis,) = await memory.notes("hypotheses")
        (insight,) = await memory.notes("insights")
    assert hypothesis.agent_id == "gpu0" and hypothesis.key.startswith("gpu0--raise-the-")
    assert hypothesis.value["suggested_config"] == {"EMBEDDING_LR": 0.8}
    assert hypothesis.value["track"] == THEIRS and hypothesis.value["priority"] == 4
    assert hypothesis.created_at == datetime.fromisoformat("2026-03-10T12:07:00+00:00").timestamp()
    assert insight.value["insight"].startswith("MATRIX_LR above 0.08")
    assert insight.created_at == datetime.fromisoformat("2026-03-10T12:08:00+00:00").timestamp()


# --- their claims block ours ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "match"),
    [
        (CLAIM1["description"], "exact"),  # gpu1 holds it, still running
        (f"  {CLAIM1['description'].lower()} ", "exact"),  # their hash ignores case, spaces
        (CLAIM1["description"] + ".", "similar"),  # scored >= 0.92 by search
        (CLAIM0["description"], "exact"),  # gpu0 has published its result
    ],
)
async def test_an_experiment_they_hold_or_ran_is_not_claimed(
    network: PublicNetwork, description: str, match: str
) -> None:
    async with ours(network) as memory:
        with capture_logs() as logs:
            won = await memory.claim(THEIRS, sha256_text(description), "ours", 600.0, description)
    assert not won
    (held,) = [e for e in logs if e["event"] == "claim_held_by_community"]
    assert held["match"].startswith(match)
    assert not any(name.startswith("claims/") and "ours" in name for name in network.keys)


async def test_a_claim_keyed_by_the_raw_description_hash_blocks_too(
    network: PublicNetwork,
) -> None:
    """The documented layout hashes the description as it is, with a longer slug."""
    description = "WINDOW_PATTERN SSSL → SSLL, WARMUP_RATIO 0.0 → 0.05, DEPTH 8 → 9"
    digest = sha256_text(description)[:6]
    slug = "window-pattern-sssl-ssll-warmup-ratio-0-0-0-05-d"  # 48 characters
    record = {**CLAIM1, "description": description, "agent_id": "gpu2"}
    network.keys[f"claims/gpu2--{slug}--{digest}"] = Key(json.dumps(record), "")
    async with ours(network) as memory:
        assert not await memory.claim(THEIRS, "sha-y", "ours", 600.0, description)


async def test_a_stale_community_claim_no_longer_blocks(network: PublicNetwork) -> None:
    clock = FakeClock(datetime.fromisoformat(CLAIM1["claimed_at"]).timestamp() + 901.0)
    async with ours(network, clock=clock) as memory:
        description = CLAIM1["description"]
        assert await memory.claim(THEIRS, sha256_text(description), "ours", 600.0, description)
        # a result stays: gpu0's experiment is never run again
        description = CLAIM0["description"]
        assert not await memory.claim(THEIRS, "sha-0", "ours", 600.0, description)


async def test_replicates_of_our_own_candidates_are_not_blocked(network: PublicNetwork) -> None:
    """Our clients' claims are content-addressed: the community check leaves them alone."""
    description = "WARMDOWN_RATIO 0.5 → 0.4"
    async with ours(network) as alice, ours(network) as bob:
        assert await alice.claim(THEIRS, "sha-w", "alice", 600.0, description)
        await alice.release(THEIRS, "sha-w", "alice")
        assert await bob.claim(THEIRS, "sha-w", "bob", 600.0, description)


# --- their client reads what ours wrote ----------------------------------------------------


async def test_their_client_finds_our_claim_by_search(
    network: PublicNetwork, reader: CommunityReader
) -> None:
    description = "WARMDOWN_RATIO 0.5 → 0.4"
    async with ours(network) as memory:
        assert await memory.claim(THEIRS, "sha-w", "ours", 600.0, description)
    (item,) = next(a["items"] for tool, a in network.calls if tool == "create_memory")
    assert (item["embed"], item["embed_source"]) == (True, "description")
    assert item["description"] == f"[autoresearch] Claim: {description}"
    (found,) = reader.similar_claims(description, NOW + 60.0)
    assert (found["agent_id"], found["description"], found["status"]) == (
        "ours",
        description,
        "claimed",
    )
    assert found["experiment_key"].startswith("ours--warmdown-ratio-0-5-0-4--")


async def test_our_result_carries_every_community_field_and_round_trips(
    network: PublicNetwork, reader: CommunityReader
) -> None:
    result = make_result(agent_id="ours", track=THEIRS, delta_vs_best=-0.01, val_bpb=0.9612)
    result = result.with_(metrics={"peak_vram_mb": 1234.5}, completed_at=NOW + 0.123456789)
    async with ours(network) as memory:
        assert (await memory.publish(result)).created
        stored = [r for r in await memory.results(THEIRS) if r.id == result.id]
    assert stored == [result]
    (name,) = [n for n in reader.names("results") if n.startswith("results/ours--")]
    record = reader.record(name)
    assert COMMUNITY_RESULT_FIELDS <= record.keys()
    assert datetime.fromisoformat(record["completed_at"]).timestamp() == pytest.approx(NOW, abs=1)
    assert record["global_best_at_publish"] == pytest.approx(0.9712)
    assert record["peak_vram_mb"] == 1234.5 and record["train_py"] == result.train_py
    (item,) = next(a["items"] for tool, a in network.calls if tool == "create_memory")
    assert item["embed"] is True
    assert item["description"] == f"[autoresearch] Result: {result.description}"


async def test_their_client_reads_our_notes(
    network: PublicNetwork, reader: CommunityReader
) -> None:
    hypothesis = Note(
        "ours--lr", "ours", {"title": "MATRIX_LR 0.05 → 0.06", "suggested_config": {"X": 1}}, NOW
    )
    insight = Note("ours--crash", "ours", {"text": "DEPTH at or above 12 crashed 4/4"}, NOW)
    async with ours(network) as memory:
        assert await memory.put_note("hypotheses", hypothesis)
        assert await memory.put_note("insights", insight)
        assert [n.value for n in await memory.notes("hypotheses") if n.agent_id == "ours"] == [
            hypothesis.value
        ]
    record = reader.record("hypotheses/ours--lr")
    assert {"agent_id", "title", "hypothesis", "suggested_config", "evidence_keys"} <= set(record)
    assert record["priority"] == 3 and datetime.fromisoformat(record["created_at"])
    record = reader.record("insights/ours--crash")
    assert record["insight"] == "DEPTH at or above 12 crashed 4/4"
    assert datetime.fromisoformat(record["posted_at"]).timestamp() == NOW


# --- both error shapes ---------------------------------------------------------------------


async def test_replays_and_taken_claims_answer_cleanly(network: PublicNetwork) -> None:
    """A key that exists, reported as a tool error or per item, is "exists", not a fault."""
    result = make_result(agent_id="ours", track=THEIRS, val_bpb=1.5, status=Status.DISCARD)
    async with ours(network) as alice, ours(network) as bob:
        assert (await alice.publish(result)).created
        assert not (await alice.publish(result)).created
        assert await alice.claim(THEIRS, "sha-x", "alice", 600.0, "DEPTH 8 → 9")
        assert await alice.claim(THEIRS, "sha-x", "alice", 600.0, "DEPTH 8 → 9")
        assert not await bob.claim(THEIRS, "sha-x", "bob", 600.0, "DEPTH 8 → 9")
        assert await bob.put_note("insights", Note("bob-x", "bob", {"text": "t"}, NOW))
        assert not await alice.put_note("insights", Note("bob-x", "alice", {"text": "u"}, NOW))


# --- tracks never clobber ------------------------------------------------------------------


async def test_our_keep_moves_their_best_when_their_track_is_ours(
    network: PublicNetwork, reader: CommunityReader
) -> None:
    result = make_result(agent_id="ours", track=THEIRS, val_bpb=0.95, vram_tier="xl")
    async with ours(network) as memory:
        assert (await memory.publish(result)).best_improved == ("track", "xl")
        best = await memory.get_best(THEIRS)
    assert best is not None and best.result_id == result.id
    meta = reader.record("best/metadata")
    assert (meta["val_bpb"], meta["agent_id"], meta["previous_best_by"]) == (0.95, "ours", "gpu0")
    assert datetime.fromisoformat(meta["achieved_at"])
    assert reader.get("best/train_py") == result.train_py


@pytest.mark.parametrize("declared", [False, True])
async def test_our_other_track_never_touches_their_best(
    network: PublicNetwork, declared: bool
) -> None:
    """Undeclared, the bare best/ reads as the synthetic track's, but it is theirs: left
    alone, logged once. Declared as theirs, synthetic lives under tracks/synthetic/."""
    before = {name: key.text for name, key in network.keys.items() if name.startswith("best/")}
    primary = THEIRS if declared else "synthetic"
    result = make_result(agent_id="ours", track="synthetic", val_bpb=1.3, vram_tier="xl")
    async with ours(network, primary, declared=declared) as memory:
        with capture_logs() as logs:
            moved = (await memory.publish(result)).best_improved
            again = make_result(agent_id="ours", val_bpb=1.2, vram_tier="xl")
            moved_again = (await memory.publish(again)).best_improved
            best = await memory.get_best("synthetic")
    assert {name: network.keys[name].text for name in before} == before
    refusals = [e for e in logs if e["event"] == "best_not_ours"]
    if declared:
        assert moved == ("track", "xl") and moved_again == ("track", "xl")
        assert best is not None and best.val_bpb == 1.2
        assert "tracks/synthetic/best/metadata" in network.keys and refusals == []
    else:
        assert moved == moved_again == () and best is None
        keys = [f"@{ORG}/best/metadata", f"@{ORG}/best/tier/xl/metadata"]
        assert sorted(e["key"] for e in refusals) == keys  # one line per key, not per write
