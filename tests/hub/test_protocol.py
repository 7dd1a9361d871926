"""The hub driven with literal JSON-RPC payloads, the way a third-party client would."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from autoresearchd.hub import batch
from autoresearchd.hub.app import Hub
from autoresearchd.hub.storage.sqlite import SqliteStore
from autoresearchd.models import sha256_text
from tests.hub.support import (
    ORG,
    TEST_HUB,
    TRACK,
    InProcessHub,
    cli,
    in_process_hub,
    tool_payload,
    write_hub_config,
)
from tests.memory.conformance import make_result

pytestmark = pytest.mark.anyio


#: For tests that read the SQLite file itself; tests/hub/test_postgres.py has their twins.
SQLITE_ONLY = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


@pytest.fixture
async def hub(database: Path | str) -> AsyncIterator[InProcessHub]:
    """A hub over each store in turn (see ``database`` in conftest.py)."""
    hub = await in_process_hub(database)
    yield hub
    await hub.store.close()


@pytest.fixture
async def http(hub: InProcessHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://hub.test") as client:
        yield client


async def register(http: httpx.AsyncClient, name: str) -> str:
    reply = await http.post("/auth/agent-register", json={"name": name})
    assert reply.status_code == 200
    return str(reply.json()["api_key"])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def call(http: httpx.AsyncClient, key: str, tool: str, arguments: dict[str, Any]) -> Any:
    """One tools/call; the decoded tool payload, or the JSON-RPC error object."""
    body = {
        "jsonrpc": "2.0",
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
        "id": 7,
    }
    reply = await http.post("/", json=body, headers={"Authorization": f"Bearer {key}"})
    message = reply.json()
    assert message["jsonrpc"] == "2.0" and message["id"] == 7
    return tool_payload(message)


@SQLITE_ONLY
async def test_registration_returns_a_key_and_stores_only_its_hash(
    http: httpx.AsyncClient, hub: InProcessHub
) -> None:
    reply = await http.post("/auth/agent-register", json={"name": "nova"})
    body = reply.json()
    assert set(body) == {"api_key", "claim_url", "verification_code"}
    assert body["verification_code"] in body["claim_url"]
    assert isinstance(hub.store, SqliteStore)
    dump = "\n".join(sqlite3.connect(hub.store.path).iterdump())
    assert body["api_key"] not in dump and sha256_text(body["api_key"]) in dump
    taken = await http.post("/auth/agent-register", json={"name": "nova"})
    assert taken.status_code == 409
    for bad in ({"name": ""}, {"name": "a b"}, {"nom": "x"}, [1]):
        assert (await http.post("/auth/agent-register", json=bad)).status_code == 400


async def test_calls_without_a_valid_key_are_unauthorised(http: httpx.AsyncClient) -> None:
    body = {
        "jsonrpc": "2.0",
        "method": "tools/call",
        "params": {"name": "list_keys", "arguments": {}},
        "id": 1,
    }
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        reply = await http.post("/", json=body, headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == -32001


async def test_create_get_and_create_again(http: httpx.AsyncClient) -> None:
    key = await register(http, "nova")
    item = {
        "key_name": f"@{ORG}/results/nova--lr-up--a1b2c3",
        "description": "LR up",
        "value": b64('{"agent_id": "nova", "val_bpb": 0.99}'),
        "base64": True,
    }
    assert await call(http, key, "create_memory", {"items": [item]}) == {
        "results": [{"key_name": item["key_name"], "status": "success", "version": 1}]
    }
    again = await call(http, key, "create_memory", {"items": [item]})
    assert again["results"][0]["status"] == "error" and again["results"][0]["code"] == "exists"
    got = await call(http, key, "get_memory", {"key_names": [item["key_name"], f"@{ORG}/missing"]})
    found, missing = got["results"]
    # Written as base64, read back decoded: community clients json.loads values as read.
    assert (found["status"], found["value"], found["base64"], found["version"]) == (
        "success",
        '{"agent_id": "nova", "val_bpb": 0.99}',
        False,
        1,
    )
    assert missing == {"key_name": f"@{ORG}/missing", "status": "not_found"}


async def test_update_honours_if_match_as_compare_and_set(http: httpx.AsyncClient) -> None:
    key = await register(http, "nova")
    name = f"@{ORG}/insights/nova--note--000001"
    await call(http, key, "create_memory", {"items": [{"key_name": name, "value": "v1"}]})
    stale = await call(http, key, "update_memory", {"key_name": name, "value": "x", "if_match": 5})
    assert stale["code"] == -32009 and stale["data"]["version"] == 1
    assert (
        await call(http, key, "update_memory", {"key_name": name, "value": "v2", "if_match": 1})
    )["version"] == 2
    assert (await call(http, key, "update_memory", {"key_name": name, "value": "v3"}))[
        "version"
    ] == 3
    got = await call(http, key, "get_memory", {"key_names": [name]})
    assert (got["results"][0]["value"], got["results"][0]["base64"]) == ("v3", False)


async def test_an_agent_may_update_only_its_own_keys_except_free_claims(
    http: httpx.AsyncClient,
) -> None:
    nova, raven = await register(http, "nova"), await register(http, "raven")
    name = f"@{ORG}/insights/nova--x--000001"
    await call(http, nova, "create_memory", {"items": [{"key_name": name, "value": "mine"}]})
    refused = await call(
        http, raven, "update_memory", {"key_name": name, "value": "theirs", "if_match": 1}
    )
    assert refused["code"] == -32003
    live = json.dumps({"agent_id": "nova", "expires_at": 4e9, "released": False})
    expired = json.dumps({"agent_id": "nova", "expires_at": 1.0, "released": False})
    for claim, text, allowed in (("live", live, False), ("expired", expired, True)):
        claim_key = f"@{ORG}/claims/synthetic--{claim}"
        await call(http, nova, "create_memory", {"items": [{"key_name": claim_key, "value": text}]})
        reply = await call(
            http, raven, "update_memory", {"key_name": claim_key, "value": "{}", "if_match": 1}
        )
        assert ("version" in reply) is allowed


async def test_a_claim_taken_over_belongs_to_its_new_holder(http: httpx.AsyncClient) -> None:
    nova, raven = await register(http, "nova"), await register(http, "raven")
    name = f"@{ORG}/claims/synthetic--abcdef123456"
    expired = json.dumps({"agent_id": "nova", "expires_at": 1.0, "released": False})
    await call(http, nova, "create_memory", {"items": [{"key_name": name, "value": expired}]})
    live = json.dumps({"agent_id": "raven", "expires_at": 4e9, "released": False})
    taken = await call(http, raven, "update_memory", {"key_name": name, "value": live})
    assert taken["version"] == 2
    # The new holder releases its claim; the old one may no longer touch it.
    released = json.dumps({"agent_id": "raven", "expires_at": 4e9, "released": True})
    assert (await call(http, raven, "update_memory", {"key_name": name, "value": released}))[
        "version"
    ] == 3
    again = json.dumps({"agent_id": "nova", "expires_at": 4e9, "released": False})
    assert "version" in await call(http, nova, "update_memory", {"key_name": name, "value": again})
    stale = await call(http, raven, "update_memory", {"key_name": name, "value": released})
    assert stale["code"] == -32003 and "belongs to nova" in stale["message"]


async def test_list_keys_filters_by_prefix_in_creation_order_with_a_limit(
    http: httpx.AsyncClient,
) -> None:
    key = await register(http, "nova")
    names = [f"@{ORG}/results/nova--r{i}--00000{i}" for i in (3, 1, 2)]
    record = json.dumps({"agent_id": "nova"})
    items = [{"key_name": n, "value": record} for n in [*names, f"@{ORG}/insights/other"]]
    await call(http, key, "create_memory", {"items": items})
    listed = await call(http, key, "list_keys", {"prefix": f"@{ORG}/results/", "limit": 2})
    # Listed names are org-relative: community clients build @{org}/{key_name} from them.
    assert [f"@{ORG}/" + k["key_name"] for k in listed["keys"]] == names[:2]
    everything = await call(http, key, "list_keys", {"prefix": f"@{ORG}/", "limit": 100})
    assert everything["count"] == 4


async def test_search_ranks_by_text_relevance_with_scores_in_0_1(http: httpx.AsyncClient) -> None:
    key = await register(http, "nova")
    texts = {
        "a": "learning rate warmup helps",
        "b": "learning rate learning rate schedule",
        "c": "depth twelve is too deep",
    }
    items = [
        {"key_name": f"@{ORG}/insights/{k}", "value": b64(v), "base64": True}
        for k, v in texts.items()
    ]
    await call(http, key, "create_memory", {"items": items})
    found = await call(
        http,
        key,
        "search_memories",
        {"query": "learning rate", "prefix": f"@{ORG}/insights/", "limit": 10},
    )
    ranked = [r["key_name"].rsplit("/", 1)[1] for r in found["results"]]
    assert ranked == ["b", "a"]
    scores = [r["score"] for r in found["results"]]
    assert all(0 <= s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    odd = await call(http, key, "search_memories", {"query": 'AND OR "( NEAR', "limit": 5})
    assert odd == {"results": []}


@SQLITE_ONLY
async def test_tools_list_describes_every_tool_the_hub_serves(
    http: httpx.AsyncClient, hub: InProcessHub
) -> None:
    """A standard MCP client learns the tools from tools/list: none may be missing."""
    reply = await http.post("/", json={"jsonrpc": "2.0", "method": "tools/list", "id": 1})
    listed = {tool["name"]: tool for tool in reply.json()["result"]["tools"]}
    assert set(listed) == Hub(hub.store, TEST_HUB, time.time).tools.names
    for name, tool in listed.items():
        schema = tool["inputSchema"]
        assert schema["type"] == "object" and set(schema["required"]) <= set(schema["properties"])
        assert tool["description"], name
    publish = listed["publish_result"]["inputSchema"]["properties"]
    assert publish["result"]["properties"]["key_names"]["maxItems"] == batch.MAX_CANDIDATES
    assert (publish["markers"]["maxItems"], publish["bests"]["maxItems"]) == (
        batch.MAX_MARKERS,
        batch.MAX_BESTS,
    )


def tool_call(params: bytes) -> bytes:
    return b'{"jsonrpc": "2.0", "method": "tools/call", "params": ' + params + b', "id": 1}'


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (b"[]", -32600),
        (b'"tools/call"', -32600),
        (b'{"jsonrpc": "1.0", "method": "tools/call", "id": 1}', -32600),
        (b'{"jsonrpc": "2.0", "method": "resources/list", "id": 1}', -32601),
        (b'{"jsonrpc": "2.0", "method": "tools/call", "params": [], "id": 1}', -32602),
        (
            tool_call(b'{"name": "drop_db"}'),
            -32602,
        ),
        (
            tool_call(b'{"name": "get_memory", "arguments": {"key_names": "x"}}'),
            -32602,
        ),
        (
            tool_call(
                b'{"name": "create_memory",'
                b' "arguments": {"items": [{"key_name": "no-org", "value": "x"}]}}'
            ),
            -32602,
        ),
        (
            tool_call(
                b'{"name": "create_memory", "arguments":'
                b' {"items": [{"key_name": "@test/k", "value": "%%", "base64": true}]}}'
            ),
            -32602,
        ),
        (
            tool_call(b'{"name": "list_keys", "arguments": {"limit": 0}}'),
            -32602,
        ),
        (
            tool_call(
                b'{"name": "update_memory", "arguments": {"key_name": "@nope/k", "value": "x"}}'
            ),
            -32004,
        ),
    ],
)
async def test_malformed_requests_get_json_rpc_errors_never_500(
    http: httpx.AsyncClient, body: bytes, code: int
) -> None:
    key = await register(http, "nova")
    reply = await http.post("/", content=body, headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200
    # Protocol faults are JSON-RPC errors; a tool's own failure (no such org) is isError.
    assert tool_payload(reply.json())["code"] == code


async def test_body_and_value_size_limits(tmp_path: Path) -> None:
    hub = await in_process_hub(
        tmp_path / "hub.sqlite",
        dataclasses.replace(TEST_HUB, max_body_bytes=2000, max_value_bytes=100),
    )
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        key = await register(http, "nova")
        big = await http.post("/", content=b"x" * 2001, headers={"Authorization": f"Bearer {key}"})
        assert big.status_code == 413 and big.json()["error"]["code"] == -32013
        value = b64("y" * 101)
        reply = await call(
            http,
            key,
            "create_memory",
            {"items": [{"key_name": f"@{ORG}/k", "value": value, "base64": True}]},
        )
        assert reply["code"] == -32013
    await hub.store.close()


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    hub = await in_process_hub(
        tmp_path / "hub.sqlite",
        dataclasses.replace(TEST_HUB, rate_limit_per_s=0.5, rate_limit_burst=2),
    )
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        key = await register(http, "nova")
        body = {
            "jsonrpc": "2.0",
            "method": "tools/call",
            "params": {"name": "list_keys", "arguments": {}},
            "id": 1,
        }
        statuses = [
            (await http.post("/", json=body, headers={"Authorization": f"Bearer {key}"}))
            for _ in range(3)
        ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["retry-after"] == "2"
    assert statuses[2].json()["error"]["code"] == -32029
    await hub.store.close()


@SQLITE_ONLY
async def test_every_write_is_audited_and_the_audit_log_is_append_only(
    http: httpx.AsyncClient, hub: InProcessHub
) -> None:
    key = await register(http, "nova")
    name = f"@{ORG}/insights/n"
    await call(http, key, "create_memory", {"items": [{"key_name": name, "value": "a"}]})
    await call(http, key, "update_memory", {"key_name": name, "value": "b", "if_match": 1})
    assert isinstance(hub.store, SqliteStore)
    conn = sqlite3.connect(hub.store.path)
    rows = conn.execute(
        "SELECT agent, action, key_name, version FROM audit WHERE key_name = ?", (name,)
    ).fetchall()
    assert rows == [("nova", "create", name, 1), ("nova", "update", name, 2)]
    for statement in ("UPDATE audit SET agent = 'x'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(statement)
    conn.close()


async def test_concurrent_best_publishes_end_with_the_true_minimum_and_a_whole_pair(
    hub: InProcessHub,
) -> None:
    """50 agents, each its own client and key, publish keeps at once through if_match."""
    rng = random.Random(11)
    results = [make_result(agent_id=f"a{i}", val_bpb=rng.uniform(1.9, 2.1)) for i in range(50)]
    keys = [await hub.agent(f"a{i}") for i in range(50)]

    async def publish(index: int) -> None:
        async with hub.memory(keys[index]) as memory:
            await memory.publish(results[index])

    async with anyio.create_task_group() as tg:
        for index in range(50):
            tg.start_soon(publish, index)
    winner = min(results, key=lambda r: r.val_bpb or 3.0)
    async with hub.memory(keys[0]) as memory:
        best = await memory.get_best(TRACK)
        pair = await memory.keys.get([f"@{ORG}/best/metadata", f"@{ORG}/best/train_py"])
    assert best is not None and (best.val_bpb, best.result_id) == (winner.val_bpb, winner.id)
    meta, source = pair
    assert meta is not None and source is not None and source.text == winner.train_py
    assert json.loads(meta.text or "")["train_py_sha256"] == sha256_text(source.text or "")


def test_hub_init_prints_an_admin_key_and_seeds_best(tmp_path: Path) -> None:
    baseline = tmp_path / "train.py"
    baseline.write_text("LR = 0.04  # search: log 0.005..0.2\n")
    config = write_hub_config(tmp_path, 0)
    done = cli("hub", "init", "--config", str(config), "--baseline", str(baseline))
    assert done.returncode == 0, done.stderr
    admin_key = done.stdout.strip()  # bare on stdout, so scripts can capture it
    assert admin_key.startswith("ard_") and done.stdout == admin_key + "\n"
    assert done.stderr.startswith(f"The admin API key of @{ORG} follows. Save it now")
    assert "cannot show it again" in done.stderr and admin_key not in done.stderr

    async def check() -> None:
        store = SqliteStore(tmp_path / "state" / "hub.sqlite")
        agent = await store.agent_for(sha256_text(admin_key))
        assert agent is not None and agent.is_admin
        meta, source = await store.get([f"@{ORG}/best/metadata", f"@{ORG}/best/train_py"])
        assert source is not None and source.text == baseline.read_text()
        assert meta is not None and json.loads(meta.text or "")["train_py_sha256"] == sha256_text(
            baseline.read_text()
        )
        await store.close()

    anyio.run(check)
    again = cli("hub", "init", "--config", str(config))
    assert (
        again.returncode == 2
        and again.stderr.count("\n") == 1
        and "initialised before" in again.stderr
    )


def test_hub_init_without_an_org_is_a_one_line_config_error(tmp_path: Path) -> None:
    config = write_hub_config(tmp_path, 0, org="")
    done = cli("hub", "init", "--config", str(config))
    assert done.returncode == 2 and "hub.org" in done.stderr and done.stderr.count("\n") == 1


@SQLITE_ONLY
async def test_json_rpc_replies_keep_their_http_shape(
    hub: InProcessHub, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The JSON-RPC endpoint answers past Starlette; its replies are what Starlette sent:
    compact JSON with its length and type, 202 with no body for a notification, 401 for a
    bad key, and the 500 Starlette gives an exception, which is raised on to the server."""
    ping = {"jsonrpc": "2.0", "method": "ping", "id": 7}
    for path in ("/", "/mcp"):
        reply = await http.post(path, json=ping)
        assert reply.content == b'{"jsonrpc":"2.0","id":7,"result":{}}'
        assert reply.headers["content-type"] == "application/json"
        assert reply.headers["content-length"] == str(len(reply.content))
    note = await http.post("/", json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (note.status_code, note.content, note.headers["content-length"]) == (202, b"", "0")
    assert "content-type" not in note.headers
    bad = await http.post("/mcp", json=ping, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == -32001
    assert (await http.get("/mcp")).status_code == 405  # other methods are Starlette's

    def broken(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(hub.app.rpc.app.hub, "_rpc", broken)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="a bug"):
        await http.post("/", json=ping)
    transport = httpx.ASGITransport(app=hub.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as quiet:
        crashed = await quiet.post("/", json=ping)
    assert (crashed.status_code, crashed.text) == (500, "Internal Server Error")
