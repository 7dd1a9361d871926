"""The ensue backend: the conformance suite against the real hub app, plus wire details."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.ensue.envelope import parse_message as parse_reply
from autoresearchd.errors import ConfigError, MemoryBackendError, TransientMemoryError
from autoresearchd.memory import EnsueMemory, open_memory
from autoresearchd.models import sha256_text
from tests.hub.support import ORG, TRACK, InProcessHub, in_process_hub
from tests.memory.conformance import FakeClock, MemoryConformance, MemoryFactory, make_result


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[InProcessHub]:
    hub = await in_process_hub(tmp_path / "hub.sqlite")
    yield hub
    await hub.store.close()


class TestEnsueOverHubConformance(MemoryConformance):
    """Every conformance test, through the client, the wire and the hub app in-process."""

    @pytest.fixture
    async def make_memory(self, hub: InProcessHub) -> MemoryFactory:
        key = await hub.agent("alice")
        return lambda clock: hub.memory(key, clock=clock)


pytestmark = pytest.mark.anyio


def rpc_text(payload: dict[str, Any]) -> str:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "result": {"content": [{"type": "text", "text": json.dumps(payload)}]},
        }
    )


def test_parse_reply_accepts_plain_json_and_sse_data_lines() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert parse_reply(json.dumps(message)) == message
    assert parse_reply(f"event: message\ndata: {json.dumps(message)}\n\n") == message
    with pytest.raises(ValueError):
        parse_reply("data: not json\n\n")


async def test_client_reads_sse_framed_replies_from_a_fake_transport() -> None:
    """A server that frames replies as SSE (``data: {...}``) still works, values decoded."""
    seen: list[dict[str, Any]] = []
    source = "LR = 1\n"
    meta = {"val_bpb": 0.9, "train_py_sha256": sha256_text(source), "result_id": "r1"}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        import base64

        def entry(key: str, text: str) -> dict[str, Any]:
            value = base64.b64encode(text.encode()).decode()
            return {"key_name": key, "status": "ok", "value": value, "base64": True}

        payload = {
            "results": [
                entry(f"@{ORG}/best/metadata", json.dumps(meta)),
                entry(f"@{ORG}/best/train_py", source),
            ]
        }
        return httpx.Response(
            200,
            text=f"event: message\ndata: {rpc_text(payload)}\n\n",
            headers={"content-type": "text/event-stream"},
        )

    memory = EnsueMemory(
        "http://x/", ORG, "k", primary_track=TRACK, transport=httpx.MockTransport(handler)
    )
    async with memory:
        best = await memory.get_best(TRACK)
    assert best is not None and (best.val_bpb, best.train_py, best.result_id) == (0.9, source, "r1")
    assert seen[0]["method"] == "tools/call"
    assert seen[0]["params"] == {
        "name": "get_memory",
        "arguments": {"key_names": [f"@{ORG}/best/metadata", f"@{ORG}/best/train_py"]},
    }


async def test_server_errors_are_retried_briefly_then_become_transient() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503, text="busy")

    memory = EnsueMemory(
        "http://x/",
        ORG,
        "k",
        primary_track=TRACK,
        transport=httpx.MockTransport(handler),
        attempts=3,
        min_backoff_s=0.001,
        max_backoff_s=0.002,
    )
    async with memory:
        with capture_logs() as logs, pytest.raises(TransientMemoryError) as info:
            await memory.was_run(TRACK, "sha")
    assert len(calls) == 3
    assert [e["attempt"] for e in logs if e["event"] == "memory_retry"] == [1, 2]
    assert info.value.backend == "ensue" and "get_memory" in str(info.value)


async def test_429_retry_after_longer_than_the_budget_goes_to_the_caller() -> None:
    """A long Retry-After is handed up (for the outbox) instead of blocking the call."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, headers={"Retry-After": "120"})

    memory = EnsueMemory(
        "http://x/", ORG, "k", primary_track=TRACK, transport=httpx.MockTransport(handler)
    )
    async with memory:
        with pytest.raises(TransientMemoryError) as info:
            await memory.get_best(TRACK)
    assert calls == [1]
    assert info.value.retry_after == 120.0


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, "{}"),
        (200, "<html>proxy</html>"),
        (400, '{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"invalid params: x"}}'),
    ],
)
async def test_errors_the_caller_cannot_fix_are_typed_and_not_retried(
    status: int, body: str
) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status, text=body)

    memory = EnsueMemory(
        "http://x/", ORG, "k", primary_track=TRACK, transport=httpx.MockTransport(handler)
    )
    async with memory:
        with pytest.raises(MemoryBackendError) as info:
            await memory.claim(TRACK, "sha", "alice", 60.0)
    assert not isinstance(info.value, TransientMemoryError)
    assert calls == [1]
    assert "\n" not in str(info.value) and "create_memory" in str(info.value)
    assert info.value.key == f"@{ORG}/claims/synthetic--sha"


async def test_the_api_key_is_sent_as_bearer_and_never_logged(hub: InProcessHub) -> None:
    key = await hub.agent("alice")
    with capture_logs() as logs:
        async with hub.memory(key, clock=FakeClock()) as memory:
            await memory.publish(make_result(val_bpb=0.9))
    assert key not in repr(logs)


async def test_a_torn_best_pair_is_read_from_the_result_record(hub: InProcessHub) -> None:
    """metadata names a source that best/train_py does not hold: the result supplies it."""
    key = await hub.agent("alice", admin=True)
    result = make_result(val_bpb=0.9)
    async with hub.memory(key, clock=FakeClock()) as memory:
        await memory.publish(result)
        await memory._kv.update(f"@{ORG}/best/train_py", "torn = True\n", None)
        best = await memory.get_best(TRACK)
    assert best is not None and best.train_py == result.train_py and best.result_id == result.id


async def test_a_seeded_baseline_reads_as_an_unscored_best(hub: InProcessHub) -> None:
    from autoresearchd.hub.admin import seed_best

    await seed_best(hub.store, ORG, "LR = 0.1\n", 5.0)
    key = await hub.agent("alice")
    async with hub.memory(key, clock=FakeClock()) as memory:
        best = await memory.get_best(TRACK)
        assert best is not None and best.val_bpb == float("inf") and best.train_py == "LR = 0.1\n"
        assert (await memory.publish(make_result(val_bpb=2.2))).best_improved == ("track", "xl")


def write_key(path: Path, mode: int) -> Path:
    path.write_text("secret-key\n")
    os.chmod(path, mode)
    return path


def ensue_config(tmp_path: Path, key_file: Path) -> dict[str, Any]:
    return {
        "memory": {
            "backend": "ensue",
            "url": "http://hub/",
            "org": ORG,
            "api_key_file": str(key_file),
        }
    }


def test_open_memory_builds_the_ensue_backend_from_config(tmp_path: Path) -> None:
    key_file = write_key(tmp_path / "key", 0o600)
    memory = open_memory(
        parse_config(ensue_config(tmp_path, key_file) | {"experiment": {"track": "t1"}})
    )
    assert isinstance(memory, EnsueMemory)
    assert (memory.url, memory.org, memory.primary_track) == ("http://hub/", ORG, "t1")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666])
def test_an_api_key_file_others_can_read_is_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    key_file = write_key(tmp_path / "key", mode)
    with pytest.raises(ConfigError) as info:
        open_memory(parse_config(ensue_config(tmp_path, key_file)))
    message = str(info.value)
    assert "chmod 600" in message and str(key_file) in message and "\n" not in message
    assert "secret-key" not in message


def test_missing_org_or_key_file_is_a_config_error(tmp_path: Path) -> None:
    config = ensue_config(tmp_path, tmp_path / "absent")
    with pytest.raises(ConfigError, match="cannot read the API key"):
        open_memory(parse_config(config))
    del config["memory"]["org"]
    with pytest.raises(ConfigError, match=r"memory\.org"):
        open_memory(parse_config(config))


async def test_taking_over_another_agents_claim_follows_the_hubs_clock(hub: InProcessHub) -> None:
    """Separate keys: an expired claim is taken over; one the hub still sees live is lost."""
    alice_key, bob_key = await hub.agent("alice"), await hub.agent("bob")
    live_clock, old_clock = FakeClock(time.time()), FakeClock()
    async with hub.memory(alice_key, clock=live_clock) as alice:
        assert await alice.claim(TRACK, "sha-live", "alice", 60.0)
    async with hub.memory(alice_key, clock=old_clock) as alice:
        assert await alice.claim(TRACK, "sha-old", "alice", 60.0)
    live_clock.advance(61.0)  # bob's clock runs ahead of the hub's
    old_clock.advance(61.0)
    async with hub.memory(bob_key, clock=live_clock) as bob:
        assert not await bob.claim(TRACK, "sha-live", "bob", 60.0)
    async with hub.memory(bob_key, clock=old_clock) as bob:
        assert await bob.claim(TRACK, "sha-old", "bob", 60.0)
        assert await bob.was_run(TRACK, "sha-old")


async def test_the_client_opens_once_and_is_used_only_while_open(hub: InProcessHub) -> None:
    memory = hub.memory(await hub.agent("alice"))
    with pytest.raises(MemoryBackendError, match="unopened"):
        await memory.results()
    async with memory:
        assert await memory.results() == []
        with pytest.raises(MemoryBackendError, match="opened"):
            await memory.__aenter__()
    with pytest.raises(MemoryBackendError, match="closed"):
        await memory.get_best(TRACK)
    with pytest.raises(MemoryBackendError, match="closed"):
        await memory.__aenter__()


async def test_keys_a_server_lists_or_finds_outside_the_prefix_are_not_read() -> None:
    """A server whose prefix match ignores case (SQLite's ``LIKE``) lists ``RESULTS/`` keys,
    which no result's checks saw, among ``results/``: the client reads neither."""
    from autoresearchd.memory.ensue_client.results import result_text

    real, fake = make_result(), make_result(val_bpb=0.01, description="made up")
    stored = {
        "results/alice--real--abc123": result_text(real),
        "RESULTS/mallory--fake--def456": result_text(fake),
        "resultsX/mallory--fake--def456": result_text(fake),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        call = json.loads(request.content)["params"]
        name, args = call["name"], call["arguments"]
        if name in ("list_keys", "search_memories"):
            under = [key for key in stored if key.lower().startswith("results")]
            listed = [{"key_name": key, "score": 0.99, "value": stored[key]} for key in under]
            payload = {"keys" if name == "list_keys" else "results": listed}
        else:
            asked = [key.removeprefix(f"@{ORG}/") for key in args["key_names"]]
            payload = {
                "results": [
                    {"key_name": key, "status": "ok", "value": stored[key]}
                    for key in asked
                    if key in stored
                ]
            }
        return httpx.Response(200, text=rpc_text(payload))

    memory = EnsueMemory(
        "http://x/", ORG, "k", primary_track=TRACK, transport=httpx.MockTransport(handler)
    )
    async with memory:
        assert [r.id for r in await memory.results(TRACK)] == [real.id]
        hits = await memory.keys.search("made up", f"@{ORG}/results/")
    assert [key for key, _, _ in hits] == [f"@{ORG}/results/alice--real--abc123"]
