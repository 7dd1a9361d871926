"""Hostile input never gets a 500: a table of bad bodies and values at every route and tool.

Each body is literal JSON text (json.dumps cannot even write 5,000 levels of nesting), sent
to the real app over each store. The app runs with its exceptions turned into responses, as
under uvicorn, so a crash shows up as the 500 a client would see. Besides "no 500", the
cases the hub once failed on get their exact error checked.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoresearchd.errors import HubError
from autoresearchd.hub.credentials import hash_key
from autoresearchd.hub.storage.auto import open_store
from autoresearchd.hub.storage.rows import Agent, NewMemory, ResultRow
from autoresearchd.hub.strictjson import MAX_DEPTH, JsonRefused, loads
from tests.hub.support import ORG, InProcessHub, in_process_hub

pytestmark = pytest.mark.anyio

DEEP_LIST = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000
#: Raw JSON texts put where a string, number or list belongs.
HOSTILE = {
    "lone surrogate": '"\\ud800"',
    "lone low surrogate": '"a\\udfffb"',
    "NUL": '"a\\u0000b"',
    "trailing newline": '"admin\\n"',
    "terminal escape": '"\\u001b[2J"',
    "non-ASCII": '"\\u00e9t\u00e9"',
    "deep list": DEEP_LIST,
    "deep object": DEEP_OBJECT,
    "2**70": str(2**70),
    "-2**70": str(-(2**70)),
    "int beyond a float": "1" + "0" * 400,
    "1e999": "1e999",
    "NaN": "NaN",
    "-Infinity": "-Infinity",
    "true": "true",
    "null": "null",
    "list": '["x"]',
    "object": '{"x": "y"}',
    "long": '"' + "x" * 20_000 + '"',
}
#: The HOSTILE entries no request may hold, wherever they are.
UNREADABLE = {
    "lone surrogate",
    "lone low surrogate",
    "NUL",
    "deep list",
    "deep object",
    "1e999",
    "NaN",
    "-Infinity",
}
#: Whole bodies for every POST route.
BODIES = {
    "empty": b"",
    "not UTF-8": b"\xff\xfe{}",
    "null": b"null",
    "list": b"[]",
    "string": b'"x"',
    "deep list": DEEP_LIST.encode(),
    "deep object": DEEP_OBJECT.encode(),
    "deep list, small": ("[" * 2000 + "]" * 2000).encode(),
    "deep id": b'{"jsonrpc": "2.0", "method": "tools/call", "id": ' + DEEP_LIST.encode() + b"}",
    "NaN id": b'{"jsonrpc": "2.0", "method": "tools/call", "id": NaN}',
    "1e999 id": b'{"jsonrpc": "2.0", "method": "tools/call", "id": 1e999}',
    "object id": b'{"jsonrpc": "2.0", "method": "tools/call", "id": {"a": 1}}',
    "surrogate method": b'{"jsonrpc": "2.0", "method": "\\ud800", "id": 1}',
    "surrogate key": b'{"\\ud800": 1}',
    "surrogate name": b'{"name": "\\ud800", "email": "a@b.org", "code": "\\ud800"}',
    "NUL name": b'{"name": "a\\u0000", "code": "x"}',
}
POST_ROUTES = ("/", "/mcp", "/auth/agent-register", "/auth/verify")
#: Query strings for the GET verification routes, and Authorization headers for every route.
QUERIES = (
    "agent=%00&code=%00",
    "agent=nova&code=%ED%A0%80",
    "agent=%ED%A0%80&code=x",
    "agent=nova%0A&code=x",
    "agent=nova&code=" + "x" * 5000,
    "agent=a&agent=b&code=c",
    "%",
)
HEADERS = (b"Bearer \xff\xfe", b"Bearer " + b"x" * 8000, b"Bearer", b"Basic \x00", b"Bearer  ")
MARK = '"@@HOSTILE@@"'


def rpc_body(tool: str, arguments: dict[str, Any], hostile: str) -> bytes:
    """A tools/call body with the raw JSON ``hostile`` wherever ``arguments`` holds MARK."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call", "id": 1}
    body["params"] = {"name": tool, "arguments": arguments}
    return json.dumps(body).replace(MARK, hostile).encode()


def tool_cases() -> list[tuple[str, dict[str, Any]]]:
    """Every tool with MARK in each of its arguments in turn (and in list members)."""
    hole = MARK.strip('"')  # json.dumps writes it back as MARK
    key = f"@{ORG}/notes/a"
    best = f"@{ORG}/best/metadata"
    return [
        ("create_memory", {"items": hole}),
        ("create_memory", {"items": [hole]}),
        ("create_memory", {"items": [{"key_name": hole, "value": "v"}]}),
        ("create_memory", {"items": [{"key_name": key, "value": hole}]}),
        ("create_memory", {"items": [{"key_name": key, "value": "v", "description": hole}]}),
        ("create_memory", {"items": [{"key_name": key, "value": "v", "base64": hole}]}),
        ("create_memory", {"items": [{"key_name": key, "value": hole, "base64": True}]}),
        ("create_memory", {"items": [{"key_name": key, "value": "v", hole: 1}]}),
        ("get_memory", {"key_names": hole}),
        ("get_memory", {"key_names": [hole]}),
        ("update_memory", {"key_name": hole, "value": "v"}),
        ("update_memory", {"key_name": key, "value": hole}),
        ("update_memory", {"key_name": key, "value": hole, "base64": True}),
        ("update_memory", {"key_name": key, "value": "v", "if_match": hole}),
        ("update_memory", {"key_name": best, "value": "{}", "if_match": hole}),
        ("list_keys", {"prefix": hole}),
        ("list_keys", {"limit": hole}),
        ("search_memories", {"query": hole}),
        ("search_memories", {"query": "x", "prefix": hole}),
        ("search_memories", {"query": "x", "limit": hole}),
        ("best_history", {"key_name": hole}),
        ("best_history", {"key_name": best, "limit": hole}),
        (hole, {}),
    ]


#: Record texts an agent stores as values, each with one hostile field.
RECORDS = {
    "seed 2**70": '{"agent_id": "alice", "seed": 1180591620717411303424}',
    "seed -2**70": '{"agent_id": "alice", "seed": -1180591620717411303424}',
    "val_bpb beyond a float": '{"agent_id": "alice", "val_bpb": 1' + "0" * 400 + "}",
    "surrogate track": '{"agent_id": "alice", "track": "\\ud800"}',
    "NUL status": '{"agent_id": "alice", "status": "\\u0000"}',
    "surrogate key": '{"agent_id": "alice", "\\udc00": 1}',
    "deep id": '{"agent_id": "alice", "id": ' + DEEP_LIST + "}",
    "not an object": DEEP_LIST,
}


@pytest.fixture
async def hub(database: Path | str) -> AsyncIterator[InProcessHub]:
    hub = await in_process_hub(database)
    yield hub
    await hub.store.close()


@pytest.fixture
async def http(hub: InProcessHub) -> AsyncIterator[httpx.AsyncClient]:
    # As under uvicorn: an exception in the app becomes a 500 reply, not a raised error.
    transport = httpx.ASGITransport(app=hub.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        yield client


async def post(http: httpx.AsyncClient, path: str, body: bytes, key: str = "") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    reply = await http.post(path, content=body, headers=headers)
    assert reply.status_code < 500, (path, body[:120], reply.status_code, reply.text[:300])
    return reply.status_code, reply.json()


async def tool_call(http: httpx.AsyncClient, key: str, body: bytes) -> dict[str, Any]:
    """The JSON-RPC reply to ``body``, which must come back as JSON on a 2xx or 4xx."""
    status, message = await post(http, "/", body, key)
    assert status == 200 and message["jsonrpc"] == "2.0", message
    return dict(message)


def payload(message: dict[str, Any]) -> Any:
    return json.loads(message["result"]["content"][0]["text"])


async def test_hostile_bodies_queries_and_keys_on_every_route_get_a_4xx_or_json_rpc_error(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    key = await hub.agent("alice")
    for path in POST_ROUTES:
        for name, body in BODIES.items():
            status, message = await post(http, path, body, key)
            if path in ("/", "/mcp"):
                assert status == 200 and message["error"]["code"] in (-32700, -32600), name
                assert message["id"] is None, name
            else:
                assert status in (400, 404, 413), (path, name, message)
    for query in QUERIES:
        for path in ("/auth/verify", "/auth/claim"):
            reply = await http.get(f"{path}?{query}")
            assert reply.status_code == 404, (path, query, reply.status_code)
    for header in HEADERS:
        for method, path in (("GET", "/auth/whoami"), ("POST", "/"), ("POST", "/mcp")):
            reply = await http.request(
                method, path, content=b"{}", headers={b"authorization": header}
            )
            assert reply.status_code == 401, (path, header[:20], reply.status_code)


async def test_hostile_values_in_every_argument_of_every_tool_never_get_a_500(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    """Unreadable ones are a parse error wherever they are; the rest reach the tools."""
    key = await hub.agent("alice")
    note = {"key_name": f"@{ORG}/notes/a", "value": "v"}  # so updates reach the store
    created = payload(await tool_call(http, key, rpc_body("create_memory", {"items": [note]}, "")))
    assert created["results"][0]["status"] == "success"
    for tool, arguments in tool_cases():
        for name, hostile in HOSTILE.items():
            message = await tool_call(http, key, rpc_body(tool, arguments, hostile))
            if name in UNREADABLE:
                assert message["error"]["code"] == -32700, (tool, arguments, name, message)
            else:
                assert "error" in message or "result" in message, (tool, arguments, name)


async def test_hostile_records_in_results_and_bests_never_get_a_500(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    """Refused per item with a reason; a val_bpb past a float is kept, as not finite."""
    key = await hub.agent("alice")
    for i, (name, record) in enumerate(RECORDS.items()):
        for is_base64 in (False, True):
            value = base64.b64encode(record.encode()).decode() if is_base64 else record
            result = f"results/alice--r--{i}-{is_base64}"
            for rest in (result, "best/metadata", "tracks/t/best/tier/s/metadata"):
                item = {"key_name": f"@{ORG}/{rest}", "value": value}
                item["base64"] = is_base64  # type: ignore[assignment]
                body = rpc_body("create_memory", {"items": [item]}, "")
                reply = payload(await tool_call(http, key, body))["results"][0]
                kept = name == "val_bpb beyond a float" and rest.startswith("results/")
                assert reply["status"] == ("success" if kept else "error"), (name, rest, reply)
                assert kept or reply["error"].startswith("refused: "), reply


async def test_deep_nesting_is_a_parse_error_naming_the_limit(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    key = await hub.agent("alice")
    for body in (DEEP_LIST, DEEP_OBJECT):
        message = await tool_call(http, key, body.encode())
        assert message["error"] == {
            "code": -32700,
            "message": f"parse error: nested deeper than {MAX_DEPTH} levels",
        }
    status, reply = await post(http, "/auth/agent-register", ("[" * 2000 + "]" * 2000).encode())
    assert (status, reply) == (
        400,
        {"error": f"the body was refused: nested deeper than {MAX_DEPTH} levels"},
    )


async def test_a_lone_surrogate_anywhere_is_refused_with_its_place(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    key = await hub.agent("alice")
    item = {"key_name": f"@{ORG}/notes/a", "value": "v", "description": "@@HOSTILE@@"}
    body = rpc_body("create_memory", {"items": [item]}, '"\\ud800"')
    error = (await tool_call(http, key, body))["error"]
    assert error["code"] == -32700
    assert error["message"] == (
        "parse error: a lone surrogate \\ud800 (not Unicode text)"
        " at $.params.arguments.items[0].description"
    )
    status, reply = await post(http, "/auth/agent-register", b'{"name": "\\udbff"}')
    assert status == 400 and "lone surrogate \\udbff" in reply["error"]
    assert "at $.name" in reply["error"]


async def test_a_seed_past_64_bits_refuses_the_result_and_keeps_nothing(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    key = await hub.agent("alice")
    item = {"key_name": f"@{ORG}/results/alice--x--1", "value": RECORDS["seed 2**70"]}
    reply = payload(await tool_call(http, key, rpc_body("create_memory", {"items": [item]}, "")))
    assert reply["results"][0] == {
        "key_name": item["key_name"],
        "status": "error",
        "code": "refused",
        "error": "refused: seed must be an integer from -2**63 to 2**63 - 1",
    }
    assert await hub.store.get([item["key_name"]]) == [None]
    ok = {"key_name": f"@{ORG}/results/alice--x--2", "value": '{"agent_id": "alice", "seed": 7}'}
    reply = payload(await tool_call(http, key, rpc_body("create_memory", {"items": [ok]}, "")))
    assert reply["results"][0]["status"] == "success"


async def test_a_crash_record_with_nan_metrics_is_still_stored(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    """Python clients write NaN for a crash's metrics: records may hold what bodies may not."""
    key = await hub.agent("alice")
    record = '{"agent_id": "alice", "status": "crash", "val_bpb": NaN, "seed": 1}'
    item = {"key_name": f"@{ORG}/results/alice--crash--1", "value": record}
    reply = payload(await tool_call(http, key, rpc_body("create_memory", {"items": [item]}, "")))
    assert reply["results"][0]["status"] == "success"


async def test_stores_refuse_values_they_cannot_hold_as_the_requests_fault(
    database: Path | str,
) -> None:
    """Past the hub's checks, a store still answers a 400 HubError, never a crash or a 503."""
    store = await open_store(database)
    try:
        await store.create_org("o", 0.0)
        alice = Agent("alice", verified=True)
        await store.register(alice, hash_key("k"), hash_key("c"), 0.0)
        bad_text = NewMemory("@o/notes/a", "v", False, "\ud800")
        with pytest.raises(HubError, match="cannot store the value") as refused:
            await store.create(alice, bad_text, 0.0)
        assert refused.value.status == 400
        row = ResultRow(
            "@o/results/r", "o", "alice", True, "r", "t", "s", 2**70, "keep", False, 1.0
        )
        value = NewMemory("@o/results/r", "{}", False)
        with pytest.raises(HubError, match="cannot store the value") as refused:
            await store.create(alice, value, 0.0, result=row)
        assert refused.value.status == 400
        assert await store.get(["@o/notes/a", "@o/results/r"]) == [None, None]
    finally:
        await store.close()


async def test_a_base64_value_that_decodes_to_a_nul_is_stored_and_found(
    hub: InProcessHub, http: httpx.AsyncClient
) -> None:
    """NUL is refused in JSON strings, but binary-safe base64 values may decode to one."""
    key = await hub.agent("alice")
    value = base64.b64encode(b"needle\x00haystack").decode()
    item = {"key_name": f"@{ORG}/notes/nul", "value": value, "base64": True}
    reply = payload(await tool_call(http, key, rpc_body("create_memory", {"items": [item]}, "")))
    assert reply["results"][0]["status"] == "success"
    body = rpc_body("search_memories", {"query": "needle"}, "")
    hits = payload(await tool_call(http, key, body))["results"]
    assert [hit["key_name"] for hit in hits] == [item["key_name"]]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"a": "\\ud800"}', "a lone surrogate \\ud800 (not Unicode text) at $.a"),
        ('{"a": ["x", {"b": "\\u0000"}]}', "a NUL character \\u0000 (PostgreSQL text cannot"),
        ('{"\\udc00": 1}', "a lone surrogate \\udc00 (not Unicode text) at $['\\udc00']"),
        ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
        ("NaN", "NaN is not a JSON number"),
        ("[1e999]", "the number 1e999 is out of range"),
        ("{", "invalid JSON: Expecting property name"),
    ],
)
def test_strict_json_says_what_it_refused(text: str, problem: str) -> None:
    with pytest.raises(JsonRefused) as refused:
        loads(text.encode())
    assert str(refused.value).startswith(problem)
    assert "\n" not in str(refused.value)


def test_strict_json_reads_what_is_fine() -> None:
    assert loads('{"ok": "\\ud83d\\ude00", "n": 2e3}') == {"ok": "\U0001f600", "n": 2000.0}
    assert loads("[" * 64 + "]" * 64) is not None
    brackets = "[{" * 100  # inside a string, where they nest nothing
    assert loads(f'[[{{"a": "{brackets}"}}]]') == [[{"a": brackets}]]
    assert loads('{"a": "\\\\ud800"}') == {"a": "\\ud800"}  # an escaped backslash, not a surrogate
    nan = loads('{"v": NaN, "w": 1e999}', allow_nan=True)
    assert nan["v"] != nan["v"] and nan["w"] == float("inf")


def test_strict_json_refuses_a_raw_surrogate_in_text_it_is_handed() -> None:
    """Text (not bytes) may hold a raw surrogate no escape spelled, beside other non-ASCII."""
    with pytest.raises(JsonRefused, match=r"lone surrogate \\udc80 \(not Unicode text\) at \$\.a"):
        loads('{"é": 1, "a": "\udc80"}')
