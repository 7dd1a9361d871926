"""``publish_result``: one request per publish, the same rules as the plain tools, and the
fallback to the plain tools on a hub that does not have it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoresearchd.config import HubConfig
from autoresearchd.errors import MemoryBackendError
from autoresearchd.hub.storage.rows import Agent, NewMemory
from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.models import Result, Status
from tests.hub.support import ORG, TEST_HUB, TRACK, URL, InProcessHub, in_process_hub
from tests.memory.conformance import MemoryConformance, MemoryFactory, make_result

pytestmark = pytest.mark.anyio

META = f"@{ORG}/best/metadata"
SOURCE = f"@{ORG}/best/train_py"
PATHS = ["one-call", "plain-tools"]


class Wire(httpx.AsyncBaseTransport):
    """The real hub app, with every tool each request named recorded. ``hide`` renames
    ``publish_result`` on the way in, so the hub answers as one without it would."""

    def __init__(self, hub: InProcessHub, *, hide: bool = False) -> None:
        self.inner = hub.transport()
        self.hide = hide
        self.tools: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        self.tools.append(body["params"]["name"])
        if self.hide and body["params"]["name"] == "publish_result":
            body["params"]["name"] = "publish_result_absent"
            request = httpx.Request(request.method, request.url, headers=request.headers, json=body)
        return await self.inner.handle_async_request(request)


def memory(hub: InProcessHub, key: str, wire: Wire) -> EnsueMemory:
    return EnsueMemory(URL, ORG, key, primary_track=TRACK, transport=wire)


async def hub_with(database: Path | str, config: HubConfig = TEST_HUB) -> InProcessHub:
    return await in_process_hub(database, config)


@pytest.fixture
async def hub(database: Path | str) -> AsyncIterator[InProcessHub]:
    hub = await hub_with(database)
    yield hub
    await hub.store.close()


class TestPlainToolsConformance(MemoryConformance):
    """Every conformance test through a hub that has no ``publish_result``: the fallback."""

    @pytest.fixture
    async def make_memory(self, tmp_path: Path) -> AsyncIterator[MemoryFactory]:
        hub = await in_process_hub(tmp_path / "hub.sqlite")
        key = await hub.agent("alice")
        yield lambda clock: EnsueMemory(
            URL, ORG, key, primary_track=TRACK, clock=clock, transport=Wire(hub, hide=True)
        )
        await hub.store.close()


async def test_a_publish_is_one_request_and_moves_the_bests(hub: InProcessHub) -> None:
    key = await hub.agent("alice")
    wire = Wire(hub)
    async with memory(hub, key, wire) as mem:
        outcome = await mem.publish(make_result(val_bpb=2.0))
        assert wire.tools == ["publish_result"]
        assert outcome.created and outcome.best_improved == ("track", "xl")
        best = await mem.get_best(TRACK)
        assert best is not None and best.val_bpb == 2.0
        tier = await mem.get_best(TRACK, "xl")
        assert tier is not None and tier.val_bpb == 2.0
        worse = await mem.publish(make_result(val_bpb=2.5))
        assert worse.created and worse.best_improved == ()
        better = make_result(val_bpb=1.9)
        assert (await mem.publish(better)).best_improved == ("track", "xl")
        assert wire.tools == ["publish_result", "get_memory", "get_memory"] + ["publish_result"] * 2
        again = await mem.publish(better)  # a replay: nothing new, nothing moved
        assert not again.created and again.best_improved == ()
        best = await mem.get_best(TRACK)
        assert best is not None and best.val_bpb == 1.9 and best.train_py == better.train_py
        assert await mem.was_run(TRACK, better.train_py_sha256)
        stored = await mem.results(TRACK)
        assert [r.id for r in stored].count(better.id) == 1


async def test_a_hub_without_it_gets_the_plain_tools_and_is_asked_once(
    hub: InProcessHub,
) -> None:
    key = await hub.agent("alice")
    wire = Wire(hub, hide=True)
    async with memory(hub, key, wire) as mem:
        first = await mem.publish(make_result(val_bpb=2.0))
        assert first.created and first.best_improved == ("track", "xl")
        assert wire.tools[0] == "publish_result" and len(wire.tools) > 2
        asked = len(wire.tools)
        await mem.publish(make_result(val_bpb=1.9))
        assert "publish_result" not in wire.tools[asked:]
        best = await mem.get_best(TRACK)
        assert best is not None and best.val_bpb == 1.9


async def _publish_both_ways(
    hub: InProcessHub, key: str, result: Result, path: str
) -> tuple[Any, list[str]]:
    """Publish ``result`` one way; the outcome (or the error) and the tools called."""
    wire = Wire(hub, hide=path == "plain-tools")
    async with memory(hub, key, wire) as mem:
        try:
            return await mem.publish(result), wire.tools
        except MemoryBackendError as exc:
            return exc, wire.tools


@pytest.mark.parametrize("path", PATHS)
async def test_replication_is_required_inside_the_call_too(database: Path | str, path: str) -> None:
    hub = await hub_with(database, dataclasses.replace(TEST_HUB, replicates=2))
    try:
        key = await hub.agent("alice")
        outcome, _ = await _publish_both_ways(hub, key, make_result(val_bpb=2.0), path)
        assert outcome.created and outcome.best_improved == ()
        async with memory(hub, key, Wire(hub)) as mem:
            assert await mem.get_best(TRACK) is None
            assert len(await mem.results(TRACK)) == 1  # the result itself is kept
    finally:
        await hub.store.close()


@pytest.mark.parametrize("path", PATHS)
async def test_a_result_in_another_agents_name_is_refused_and_writes_nothing(
    hub: InProcessHub, path: str
) -> None:
    key = await hub.agent("alice")
    await hub.agent("bob")
    squat = make_result(agent_id="bob", val_bpb=2.0)
    outcome, _ = await _publish_both_ways(hub, key, squat, path)
    assert isinstance(outcome, MemoryBackendError)
    assert await hub.store.list_keys(f"@{ORG}/", 100) == []


@pytest.mark.parametrize("path", PATHS)
async def test_an_implausible_score_never_moves_a_best(hub: InProcessHub, path: str) -> None:
    key = await hub.agent("alice")
    outcome, _ = await _publish_both_ways(hub, key, make_result(val_bpb=0.5), path)
    assert outcome.created and outcome.best_improved == ()
    assert await hub.store.get([META, SOURCE]) == [None, None]
    (row,) = await hub.store.select("SELECT status FROM results", [])
    assert row == ("invalid",)


@pytest.mark.parametrize("path", PATHS)
async def test_an_unverified_agent_stores_its_result_but_moves_no_shared_best(
    hub: InProcessHub, path: str
) -> None:
    key = await hub.agent("eve", verified=False)
    outcome, _ = await _publish_both_ways(hub, key, make_result(agent_id="eve"), path)
    assert outcome.created and outcome.best_improved == ()
    assert await hub.store.get([META, SOURCE]) == [None, None]
    # Its own best/agent/ key is its own to write.
    (own,) = await hub.store.get([f"@{ORG}/best/agent/eve"])
    assert own is not None and json.loads(own.value if not own.is_base64 else own.text or "")


async def test_bad_arguments_are_invalid_params_naming_the_field(hub: InProcessHub) -> None:
    key = await hub.agent("alice")
    async with httpx.AsyncClient(transport=hub.transport(), base_url=URL) as http:
        for arguments, words in (
            ({}, "result is required"),
            ({"result": {"key_names": [], "value": "{}"}}, "key_names"),
            ({"result": {"key_names": [f"@{ORG}/notes/x"], "value": "{}"}}, "results/ keys"),
            ({"result": {"key_names": [f"@{ORG}/results/x"], "value": "[]"}}, "with an id"),
            (
                {
                    "result": {"key_names": [f"@{ORG}/results/x"], "value": '{"id": "r"}'},
                    "markers": [{"key_name": f"@{ORG}/runs/x", "value": "[1]"}],
                },
                "markers must hold a JSON object",
            ),
        ):
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "publish_result", "arguments": arguments},
            }
            reply = await http.post("/", json=body, headers={"Authorization": f"Bearer {key}"})
            error = reply.json()["error"]
            assert error["code"] == -32602 and words in error["message"], (arguments, error)


async def test_a_discard_moves_nothing_and_marks_the_run(hub: InProcessHub) -> None:
    key = await hub.agent("alice")
    wire = Wire(hub)
    async with memory(hub, key, wire) as mem:
        discard = make_result(status=Status.DISCARD, val_bpb=2.0)
        outcome = await mem.publish(discard)
        assert outcome.created and outcome.best_improved == ()
        assert await mem.get_best(TRACK) is None
        assert await mem.was_run(TRACK, discard.train_py_sha256)
        assert wire.tools == ["publish_result", "get_memory", "get_memory"]  # 2 reads after


async def _seed_best(hub: InProcessHub, record: dict[str, Any]) -> None:
    """The bare best pair as an org seeded another way holds it (written past the policy,
    as a community hub or an operator's import would have it)."""
    carol = Agent("carol", verified=True)
    for key, text in ((META, json.dumps(record)), (SOURCE, "print('theirs')\n")):
        done = await hub.store.create(carol, NewMemory(key, text, False), 0.0)
        assert done.version is not None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "theirs",
    [
        {"track": "another-track", "val_bpb": 3.0, "train_py_sha256": "0" * 64},
        {"val_bpb": 3.0, "agent_id": "gpu0", "status": "keep"},  # a community best: no track
    ],
    ids=["another-track", "community"],
)
async def test_a_best_of_another_track_is_left_alone(
    hub: InProcessHub, path: str, theirs: dict[str, Any]
) -> None:
    key = await hub.agent("alice")
    await _seed_best(hub, theirs)
    outcome, _ = await _publish_both_ways(hub, key, make_result(val_bpb=2.0), path)
    assert outcome.created and "track" not in outcome.best_improved
    meta, source = await hub.store.get([META, SOURCE])
    assert meta is not None and json.loads(meta.text or "") == theirs
    assert source is not None and source.text == "print('theirs')\n"
