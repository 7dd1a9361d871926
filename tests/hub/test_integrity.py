"""Integrity of the best: who may move best/, with what evidence, and how it is audited."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoresearchd.config import HubConfig
from autoresearchd.models import Result, Status, sha256_text
from tests.hub.support import ORG, TEST_HUB, TRACK, InProcessHub, in_process_hub, tool_payload
from tests.memory.conformance import FakeClock, make_result

pytestmark = pytest.mark.anyio

META = f"@{ORG}/best/metadata"
SOURCE = f"@{ORG}/best/train_py"
#: Most tests here check the rules a claimant's own replicates meet: a one-person hub's.
REPLICATED = dataclasses.replace(TEST_HUB, replicates=2, replication="any")
#: The hub's defaults for replication (other agents' confirmations, judged for significance).
DEFAULT_RULES = {
    key: getattr(HubConfig(), key)
    for key in ("replicates", "replication", "max_confirmations", "significance")
}


@dataclasses.dataclass
class Swarm:
    """A hub that needs two replicates, its HTTP client, and keys: alice and bob are
    verified, eve is not."""

    hub: InProcessHub
    http: httpx.AsyncClient
    keys: dict[str, str]

    async def call(self, agent: str, tool: str, arguments: dict[str, Any]) -> Any:
        body = {
            "jsonrpc": "2.0",
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
            "id": 1,
        }
        headers = {"Authorization": f"Bearer {self.keys[agent]}"}
        message = (await self.http.post("/", json=body, headers=headers)).json()
        return tool_payload(message)

    async def publish(self, agent: str, result: Result) -> str:
        """Store ``result`` under ``agent``'s key; its key name (asserting it was created)."""
        name = f"@{ORG}/results/{result.agent_id}--{result.id}"
        item = {"key_name": name, "value": json.dumps(result.to_record())}
        reply = await self.call(agent, "create_memory", {"items": [item]})
        assert reply["results"][0]["status"] == "success", reply
        return name

    async def replicated(self, agent: str, values: tuple[float, ...], source: str) -> str:
        """The daemon's flow: provisional discards, then a keep carrying the mean of all but
        the first (selecting) run."""
        runs = [
            make_result(
                agent_id=agent,
                train_py=source,
                status=Status.DISCARD,
                provisional=True,
                val_bpb=value,
            )
            for value in values
        ]
        last = runs[-1].with_(
            status=Status.KEEP, provisional=False, confirmed_bpb=statistics.fmean(values[1:])
        )
        for run in runs[:-1]:
            await self.publish(agent, run)
        return await self.publish(agent, last)

    async def write_best(
        self, agent: str, record: dict[str, Any], if_match: int | None = None, key: str = META
    ) -> Any:
        """Create best metadata (if_match None) or update it; the reply or the error."""
        text = json.dumps(record)
        if if_match is None:
            reply = await self.call(
                agent, "create_memory", {"items": [{"key_name": key, "value": text}]}
            )
            return reply["results"][0]
        args = {"key_name": key, "value": text, "if_match": if_match}
        return await self.call(agent, "update_memory", args)


def metadata(result_key: str, source: str, val_bpb: Any, agent: str = "alice") -> dict[str, Any]:
    return {
        "track": TRACK,
        "val_bpb": val_bpb,
        "train_py_sha256": sha256_text(source),
        "result_key": result_key,
        "agent_id": agent,
        "description": "LR up",
    }


def refused(reply: Any, reason: str) -> bool:
    text = json.dumps(reply)
    return ("refused" in text or reply.get("code") == -32003) and reason in text


async def make_swarm(database: Path | str, **hub: Any) -> AsyncIterator[Swarm]:
    config = dataclasses.replace(REPLICATED, **hub)
    in_process = await in_process_hub(database, config)
    keys = {
        "alice": await in_process.agent("alice"),
        "bob": await in_process.agent("bob"),
        "eve": await in_process.agent("eve", verified=False),
        "admin": await in_process.agent("admin", admin=True),
    }
    async with httpx.AsyncClient(transport=in_process.transport(), base_url="http://h") as http:
        yield Swarm(in_process, http, keys)
    await in_process.store.close()


@pytest.fixture
async def swarm(database: Path | str) -> AsyncIterator[Swarm]:
    """A swarm over each store in turn (see ``database`` in conftest.py)."""
    async for swarm in make_swarm(database):
        yield swarm


@pytest.fixture
async def other_agent_swarm(database: Path | str) -> AsyncIterator[Swarm]:
    async for swarm in make_swarm(database, replication="other-agent"):
        yield swarm


@pytest.fixture
async def default_swarm(database: Path | str) -> AsyncIterator[Swarm]:
    """A swarm under the hub's default replication settings."""
    async for swarm in make_swarm(database, **DEFAULT_RULES):
        yield swarm


async def confirm(swarm: Swarm, agent: str, source: str, values: tuple[float, ...]) -> None:
    """``agent`` publishes fresh runs of ``source``, as a confirming daemon does."""
    for value in values:
        await swarm.publish(
            agent,
            make_result(
                agent_id=agent,
                train_py=source,
                provisional=True,
                status=Status.DISCARD,
                val_bpb=value,
            ),
        )


async def test_a_verified_replicated_result_moves_the_best_and_then_its_source(
    swarm: Swarm,
) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.92, 1.90, 1.92), source)
    reply = await swarm.write_best("alice", metadata(key, source, 1.91))
    assert reply["status"] == "success", reply
    wrong = await swarm.call(
        "alice", "create_memory", {"items": [{"key_name": SOURCE, "value": "LR = 9\n"}]}
    )
    assert refused(wrong["results"][0], "does not match the train_py_sha256")
    right = await swarm.call(
        "alice", "create_memory", {"items": [{"key_name": SOURCE, "value": source}]}
    )
    assert right["results"][0]["status"] == "success"


async def test_a_result_must_carry_the_key_agents_own_name(swarm: Swarm) -> None:
    forged = make_result(agent_id="bob", val_bpb=1.8)
    item = {"key_name": f"@{ORG}/results/bob--forged", "value": json.dumps(forged.to_record())}
    reply = await swarm.call("alice", "create_memory", {"items": [item]})
    assert refused(reply["results"][0], "must carry agent_id 'alice'")


async def test_results_must_hash_their_source_and_are_write_once(swarm: Swarm) -> None:
    lying = make_result(agent_id="alice").to_record() | {"train_py_sha256": "0" * 64}
    item = {"key_name": f"@{ORG}/results/alice--lying", "value": json.dumps(lying)}
    reply = await swarm.call("alice", "create_memory", {"items": [item]})
    assert refused(reply["results"][0], "does not hash train_py")
    key = await swarm.publish("alice", make_result(agent_id="alice"))
    again = await swarm.call("alice", "update_memory", {"key_name": key, "value": "{}"})
    assert refused(again, "write-once")


async def test_an_unverified_agent_cannot_move_a_best(swarm: Swarm) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("eve", (1.92, 1.90, 1.92), source)
    reply = await swarm.write_best("eve", metadata(key, source, 1.91, agent="eve"))
    assert refused(reply, "only verified agents")


async def test_results_of_unverified_agents_are_marked_and_do_not_count(swarm: Swarm) -> None:
    source = "LR = 0.05\n"
    for value in (1.90, 1.91):
        await swarm.publish(
            "eve",
            make_result(agent_id="eve", train_py=source, provisional=True, val_bpb=value),
        )
    key = await swarm.publish("alice", make_result(agent_id="alice", train_py=source, val_bpb=1.92))
    got = await swarm.call("alice", "list_keys", {"prefix": f"@{ORG}/results/"})
    assert {k["key_name"].split("/")[-1].split("--")[0]: k["verified"] for k in got["keys"]} == {
        "eve": False,
        "alice": True,
    }
    reply = await swarm.write_best("alice", metadata(key, source, 1.92))
    assert refused(reply, "needs 3 verified results with distinct seeds of this source, has 1")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"result_key": f"@{ORG}/results/alice--missing"}, "does not exist"),
        ({"result_key": "@other/results/alice--x"}, "must name its result_key under"),
        ({"train_py_sha256": "f" * 64}, "has another train_py_sha256"),
        ({"val_bpb": None}, "needs a finite val_bpb"),
        ({"val_bpb": math.nan}, "needs a finite val_bpb"),
        ({"val_bpb": math.inf}, "needs a finite val_bpb"),
        ({"val_bpb": 1.8}, "better than the replicates' mean"),
        ({"result_id": "someone-else"}, "is not the id of"),
    ],
)
async def test_best_metadata_must_match_its_evidence(
    swarm: Swarm, change: dict[str, Any], reason: str
) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.92, 1.90, 1.92), source)
    reply = await swarm.write_best("alice", metadata(key, source, 1.91) | change)
    assert refused(reply, reason), reply


async def test_a_best_may_name_only_its_writers_own_result(swarm: Swarm) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("bob", (1.92, 1.90, 1.92), source)
    reply = await swarm.write_best("alice", metadata(key, source, 1.91))
    assert refused(reply, "is not by alice")


async def test_two_results_are_not_enough_when_the_hub_wants_two_replicates(
    swarm: Swarm,
) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.90, 1.92), source)
    reply = await swarm.write_best("alice", metadata(key, source, 1.91))
    assert refused(reply, "needs 3 verified results with distinct seeds of this source, has 2")


async def test_replicates_with_the_same_seed_count_once(swarm: Swarm) -> None:
    source = "LR = 0.05\n"
    for value in (1.90, 1.91):
        await swarm.publish(
            "alice",
            make_result(
                train_py=source, seed=7, provisional=True, status=Status.DISCARD, val_bpb=value
            ),
        )
    key = await swarm.publish("alice", make_result(train_py=source, seed=8, val_bpb=1.92))
    reply = await swarm.write_best("alice", metadata(key, source, 1.91))
    assert refused(reply, "has 2")


async def test_the_new_best_must_beat_the_old_by_value_and_by_mean(swarm: Swarm) -> None:
    first = "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.92, 1.90, 1.92), first)
    assert (await swarm.write_best("alice", metadata(key, first, 1.91)))["status"] == "success"
    lucky = "LR = 0.06\n"
    key = await swarm.replicated("alice", (1.80, 1.95, 1.96), lucky)
    worse = await swarm.write_best("alice", metadata(key, lucky, 1.92), if_match=1)
    assert refused(worse, "does not beat the best 1.91")
    unreplicated = await swarm.write_best("alice", metadata(key, lucky, 1.85), if_match=1)
    assert refused(unreplicated, "the replicates' mean")


async def test_best_writes_need_compare_and_set(swarm: Swarm) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.92, 1.90, 1.92), source)
    await swarm.write_best("admin", {"val_bpb": None, "train_py_sha256": "seed"})
    record = metadata(key, source, 1.91)
    blind = await swarm.call(
        "alice", "update_memory", {"key_name": META, "value": json.dumps(record)}
    )
    assert refused(blind, "compare-and-set")
    stale = await swarm.write_best("alice", record, if_match=7)
    assert stale["code"] == -32009
    assert (await swarm.write_best("alice", record, if_match=1))["version"] == 2


async def test_other_agent_replication_counts_only_other_agents_confirmations(
    other_agent_swarm: Swarm,
) -> None:
    """alice's own replicates (1.80, 1.80) count for nothing; bob's two (1.90, 1.92) do, and
    the best records their mean, not alice's."""
    swarm, source = other_agent_swarm, "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.80, 1.80, 1.80), source)
    alone = await swarm.write_best("alice", metadata(key, source, 1.80))
    assert refused(alone, "needs 2 confirming results by other agents, has 0"), alone
    for value in (1.90, 1.92):
        await swarm.publish(
            "bob",
            make_result(
                agent_id="bob",
                train_py=source,
                provisional=True,
                status=Status.DISCARD,
                val_bpb=value,
            ),
        )
    lucky = await swarm.write_best("alice", metadata(key, source, 1.80))
    assert refused(lucky, "better than the replicates' mean 1.91"), lucky
    reply = await swarm.write_best("alice", metadata(key, source, 1.91))
    assert reply["status"] == "success", reply


async def test_every_change_of_the_best_is_audited_and_readable(swarm: Swarm) -> None:
    old, new = "LR = 0.05\n", "LR = 0.06\n"
    first = await swarm.replicated("alice", (1.92, 1.90, 1.92), old)
    await swarm.write_best("alice", metadata(first, old, 1.91))
    second = await swarm.replicated("bob", (1.82, 1.80, 1.82), new)
    await swarm.write_best("bob", metadata(second, new, 1.81, agent="bob"), if_match=1)
    history = await swarm.call("eve", "best_history", {"key_name": META})
    changes = [(c["agent"], c["action"], c["metadata"]["val_bpb"]) for c in history["changes"]]
    assert changes == [("bob", "update", 1.81), ("alice", "create", 1.91)]
    limited = await swarm.call("eve", "best_history", {"key_name": META, "limit": 1})
    assert len(limited["changes"]) == 1
    other = await swarm.call("eve", "best_history", {"key_name": f"@{ORG}/insights/x"})
    assert other["code"] == -32602


async def test_the_daemons_flow_moves_the_best_once_replicated(swarm: Swarm) -> None:
    """Through the client: provisional, provisional, keep with the mean of the two
    confirmations; an unverified agent's better flow is stored but moves nothing."""
    source = "LR = 0.05\n"
    values = (1.80, 1.90, 1.92)
    runs = [
        make_result(train_py=source, status=Status.DISCARD, provisional=True, val_bpb=v)
        for v in values
    ]
    runs[-1] = runs[-1].with_(
        status=Status.KEEP, provisional=False, confirmed_bpb=statistics.fmean(values[1:])
    )
    async with swarm.hub.memory(swarm.keys["alice"], clock=FakeClock()) as alice:
        assert (await alice.publish(runs[0])).best_improved == ()
        assert (await alice.publish(runs[1])).best_improved == ()
        assert (await alice.publish(runs[2])).best_improved == ("track", "xl")
        best = await alice.get_best(TRACK)
    assert best is not None and best.result_id == runs[2].id and best.train_py == source
    assert math.isclose(best.val_bpb, 1.91)
    eve_runs = [
        make_result(
            agent_id="eve",
            train_py="LR = 0.07\n",
            status=Status.DISCARD,
            provisional=True,
            val_bpb=v,
        )
        for v in (1.8, 1.8, 1.8)
    ]
    eve_runs[-1] = eve_runs[-1].with_(status=Status.KEEP, provisional=False, confirmed_bpb=1.8)
    async with swarm.hub.memory(swarm.keys["eve"], clock=FakeClock()) as eve:
        for run in eve_runs:
            outcome = await eve.publish(run)
            assert outcome.created and outcome.best_improved == ()
        still = await eve.get_best(TRACK)
        history = await eve.best_history(TRACK)
    assert still is not None and still.result_id == runs[2].id
    assert [(c.agent_id, c.result_id) for c in history] == [("alice", runs[2].id)]


async def test_a_keep_published_without_its_replicates_moves_nothing(swarm: Swarm) -> None:
    """A daemon with fewer replicates than the hub: stored, no error, no best."""
    async with swarm.hub.memory(swarm.keys["alice"], clock=FakeClock()) as alice:
        outcome = await alice.publish(make_result(val_bpb=1.9, confirmed_bpb=1.9))
        assert outcome.created and outcome.best_improved == ()
        assert await alice.get_best(TRACK) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1.0, "implausible: val_bpb -1.0 is not positive"),
        (0.502, "implausible: val_bpb 0.502 is below the synthetic track's floor 1.7363"),
        (math.nan, "needs a finite val_bpb"),
        (math.inf, "needs a finite val_bpb"),
    ],
)
async def test_a_fabricated_score_is_refused_as_a_best(
    swarm: Swarm, value: float, reason: str
) -> None:
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (value, value, value), source)
    reply = await swarm.write_best("alice", metadata(key, source, value))
    assert refused(reply, reason), reply


async def test_implausible_results_are_stored_but_never_count_as_replicates(swarm: Swarm) -> None:
    """Three runs that claim -1.0 are indexed invalid: an honest-looking best over them fails."""
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (-1.0, -1.0, -1.0), source)
    stored = await swarm.call("alice", "get_memory", {"key_names": [key]})
    assert json.loads(stored["results"][0]["value"])["val_bpb"] == -1.0
    reply = await swarm.write_best("alice", metadata(key, source, 1.9))
    assert refused(reply, "needs 3 verified results with distinct seeds of this source, has 0")


async def test_a_best_must_name_a_result_of_its_own_track(swarm: Swarm) -> None:
    """A result filed under a track with no known floor cannot stand as the synthetic best."""
    source = "LR = 0.05\n"
    runs = [
        make_result(train_py=source, track="made-up", provisional=True, val_bpb=0.5)
        for _ in range(3)
    ]
    key = ""
    for run in runs:
        key = await swarm.publish("alice", run)
    reply = await swarm.write_best("alice", metadata(key, source, 0.5))
    assert refused(reply, "is of track 'made-up', not 'synthetic'"), reply


@pytest.mark.parametrize(
    "squatted",
    [
        "best/agent/bob",
        "tracks/shakespeare/best/agent/bob",
        "results/bob--lr-up--abc123",
        "claims/bob--lr-up--abc123",
        "hypotheses/bob--0123456789abcdef",
        "insights/bob--0123456789abcdef",
    ],
)
async def test_an_agent_creates_keys_only_in_its_own_namespace(swarm: Swarm, squatted: str) -> None:
    """alice cannot take a key bob will need; bob then writes it as usual."""
    key = f"@{ORG}/{squatted}"
    value = json.dumps(make_result(agent_id="alice").to_record())
    reply = await swarm.call(
        "alice", "create_memory", {"items": [{"key_name": key, "value": value}]}
    )
    assert refused(reply["results"][0], f"{key} is not in alice's namespace"), reply
    own = json.dumps(make_result(agent_id="bob").to_record())
    mine = await swarm.call("bob", "create_memory", {"items": [{"key_name": key, "value": own}]})
    assert mine["results"][0]["status"] == "success", mine


@pytest.mark.parametrize(
    "own",
    [
        "best/agent/alice",
        "hypotheses/alice--0123456789abcdef",
        "claims/synthetic--0123456789ab",
        "insights/lr-up",
    ],
)
async def test_own_keys_and_keys_that_name_no_one_may_be_created(swarm: Swarm, own: str) -> None:
    key = f"@{ORG}/{own}"
    reply = await swarm.call(
        "alice", "create_memory", {"items": [{"key_name": key, "value": "{}"}]}
    )
    assert reply["results"][0]["status"] == "success", reply


@pytest.mark.parametrize("claimed", [1.80, 0.502])
async def test_replaying_anothers_best_source_with_a_better_claim_is_refused(
    swarm: Swarm, claimed: float
) -> None:
    """bob's source is the best; alice re-publishes it as her own replicated run with a
    better value (the issue's attack claimed 0.502, below the floor): refused, and the best
    still credits bob."""
    source = "LR = 0.05\n"
    bobs = await swarm.replicated("bob", (1.92, 1.90, 1.92), source)
    assert (await swarm.write_best("bob", metadata(bobs, source, 1.91, agent="bob")))["version"]
    replay = await swarm.replicated("alice", (claimed, claimed, claimed), source)
    reply = await swarm.write_best("alice", metadata(replay, source, claimed), if_match=1)
    reason = "credit for this source goes to bob" if claimed > 1.75 else "implausible"
    assert refused(reply, reason), reply
    best = await swarm.call("eve", "get_memory", {"key_names": [META]})
    assert json.loads(best["results"][0]["value"])["agent_id"] == "bob"


async def test_the_first_publisher_may_name_its_source_after_others_reran_it(
    swarm: Swarm,
) -> None:
    """Other agents' runs of alice's source are confirmations, not a claim on its credit."""
    source = "LR = 0.05\n"
    first = await swarm.publish(
        "alice",
        make_result(train_py=source, status=Status.DISCARD, provisional=True, val_bpb=1.90),
    )
    for value in (1.90, 1.92):
        await swarm.publish(
            "bob",
            make_result(
                agent_id="bob",
                train_py=source,
                status=Status.DISCARD,
                provisional=True,
                val_bpb=value,
            ),
        )
    by_bob = await swarm.write_best("bob", metadata(first, source, 1.91, agent="bob"))
    assert refused(by_bob, "is not by bob")
    reply = await swarm.write_best("alice", metadata(first, source, 1.91))
    assert reply["status"] == "success", reply


async def test_the_selecting_run_never_counts_toward_the_hubs_mean(swarm: Swarm) -> None:
    """A lucky first run (1.80) would pull the mean of all three (1.88) below the best
    (1.91); the confirmations alone (1.92) do not beat it."""
    first = "LR = 0.05\n"
    key = await swarm.replicated("alice", (1.92, 1.90, 1.92), first)
    assert (await swarm.write_best("alice", metadata(key, first, 1.91)))["status"] == "success"
    lucky = "LR = 0.06\n"
    key = await swarm.replicated("alice", (1.80, 1.92, 1.92), lucky)
    reply = await swarm.write_best("alice", metadata(key, lucky, 1.88), if_match=1)
    assert refused(reply, "the replicates' mean 1.92 does not beat the best 1.91"), reply


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_a_non_finite_result_is_indexed_invalid_and_refused_as_a_best(
    swarm: Swarm, value: float
) -> None:
    """A result claiming NaN or inf is stored (the evidence of what was claimed), indexed
    ``invalid`` rather than kept as a score, and a best naming it is refused."""
    source = "LR = 0.05\n"
    key = await swarm.replicated("alice", (value, value, value), source)
    rows = await swarm.hub.store.select(
        "SELECT status, val_bpb FROM results WHERE train_py_sha256 = ?", (sha256_text(source),)
    )
    assert sorted(rows) == [("invalid", None)] * 3
    reply = await swarm.write_best("alice", metadata(key, source, 1.9))
    assert refused(reply, "needs 3 verified results with distinct seeds of this source, has 0")


async def test_one_agent_alone_cannot_move_the_best_under_the_default_hub_config(
    default_swarm: Swarm,
) -> None:
    """alice's claim rests on her own replicates only: refused however good, through the
    client too (her daemon's keep is stored and moves nothing)."""
    swarm, source = default_swarm, "LR = 0.05\n"
    assert HubConfig().replication == "other-agent"
    key = await swarm.replicated("alice", (1.80, 1.80, 1.80), source)
    reply = await swarm.write_best("alice", metadata(key, source, 1.80))
    assert refused(reply, "needs 2 confirming results by other agents, has 0"), reply
    own = make_result(train_py="LR = 0.06\n", val_bpb=1.8, confirmed_bpb=1.8)
    async with swarm.hub.memory(swarm.keys["alice"], clock=FakeClock()) as alice:
        outcome = await alice.publish(own)
        assert outcome.created and outcome.best_improved == ()
        assert await alice.get_best(TRACK) is None


async def test_other_agents_confirmations_must_beat_the_best_significantly(
    default_swarm: Swarm,
) -> None:
    """Over a best of 1.91, bob's confirmations at 1.905 (within the noise) are refused;
    at 1.80 they are far beyond it, and the best moves to their mean."""
    swarm, first, second = default_swarm, "LR = 0.05\n", "LR = 0.06\n"
    key = await swarm.replicated("alice", (1.92, 1.91, 1.91), first)
    await confirm(swarm, "bob", first, (1.91, 1.91))
    assert (await swarm.write_best("alice", metadata(key, first, 1.91)))["version"] == 1
    close = await swarm.replicated("alice", (1.90, 1.905, 1.905), second)
    await confirm(swarm, "bob", second, (1.905, 1.905))
    reply = await swarm.write_best("alice", metadata(close, second, 1.905), if_match=1)
    assert refused(reply, "do not beat the best 1.91 significantly"), reply
    third = "LR = 0.07\n"
    far = await swarm.replicated("alice", (1.80, 1.80, 1.80), third)
    await confirm(swarm, "bob", third, (1.80, 1.801))
    reply = await swarm.write_best("alice", metadata(far, third, 1.8005), if_match=1)
    assert reply["version"] == 2, reply


async def test_an_agent_whose_runs_agree_with_others_needs_one_confirmation_fewer(
    default_swarm: Swarm,
) -> None:
    """carol has no standing: one confirmation by bob is not enough for her claim. alice's
    runs of three sources agree with bob's: she is trusted, and one confirmation is."""
    swarm = default_swarm
    swarm.keys["carol"] = await swarm.hub.agent("carol")
    cold = "LR = 0.09\n"
    key = await swarm.replicated("carol", (1.80, 1.80, 1.80), cold)
    await confirm(swarm, "bob", cold, (1.80,))
    reply = await swarm.write_best("carol", metadata(key, cold, 1.80, agent="carol"))
    assert refused(reply, "needs 2 confirming results by other agents, has 1"), reply
    for index in range(3):
        source = f"WIDTH = {index}\n"
        await swarm.replicated("alice", (1.90, 1.91, 1.912), source)
        await confirm(swarm, "bob", source, (1.911, 1.909))
    claim = "LR = 0.08\n"
    key = await swarm.replicated("alice", (1.80, 1.80, 1.80), claim)
    await confirm(swarm, "bob", claim, (1.801,))
    reply = await swarm.write_best("alice", metadata(key, claim, 1.801))
    assert reply["status"] == "success", reply
