"""The community's side of a recorded session: the public network's replies, and its client.

``tests/fixtures/community/session.json`` records what an autoresearch-at-home
coordinator sends and what it relies on in the replies. :class:`PublicNetwork` answers
as the public Ensue network does there: SSE-framed replies, ``status: "success"``,
values decoded, org-relative names, no versions, a tool error (``isError``) or a
per-item error for a key that exists (``exists_as``), and ``search_memories`` scores in
[0, 1] (text similarity of the query to a key's description, standing in for embeddings).
:func:`replay` sends the session to any transport and checks every reply against the
recording; :class:`CommunityReader` reads the way their client reads.
"""

from __future__ import annotations

import base64
import difflib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

SESSION = Path(__file__).resolve().parent.parent / "fixtures" / "community" / "session.json"
CLAIM_TTL_S = 900.0
SIMILAR = 0.92


def load_session() -> dict[str, Any]:
    session: dict[str, Any] = json.loads(SESSION.read_text(encoding="utf-8"))
    return session


def session_now() -> float:
    return datetime.fromisoformat(load_session()["now"]).timestamp()


@dataclass
class Key:
    """A stored key: its text (values are kept decoded) and its description."""

    text: str
    description: str


#: The tools the public network has; any other gets its "Unknown tool" answer.
TOOLS = frozenset({"create_memory", "get_memory", "update_memory", "list_keys", "search_memories"})


@dataclass
class PublicNetwork:
    """The public Ensue network's behaviour, as the recorded session shows it."""

    org: str
    exists_as: Literal["tool", "item"] = "tool"
    keys: dict[str, Key] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        tool, arguments = body["params"]["name"], body["params"]["arguments"]
        self.calls.append((tool, arguments))
        handler: Callable[[dict[str, Any]], tuple[dict[str, Any], bool]] | None
        handler = getattr(self, tool, None) if tool in TOOLS else None
        if handler is None:  # as an MCP server answers a tool it lacks: a plain-text error
            text, failed = f"Unknown tool: {tool}", True
        else:
            payload, failed = handler(arguments)
            text = json.dumps(payload)
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
        if failed:
            result["isError"] = True
        message = {"jsonrpc": "2.0", "id": body["id"], "result": result}
        return httpx.Response(200, text=f"event: message\ndata: {json.dumps(message)}\n\n")

    def _relative(self, name: str) -> str:
        prefix = f"@{self.org}/"
        return name[len(prefix) :] if name.startswith(prefix) else name

    def create_memory(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        results = []
        for item in args["items"]:
            name = self._relative(item["key_name"])
            if name in self.keys:
                if self.exists_as == "tool":
                    return {"error": f"key '{name}' already exists"}, True
                results.append({"key_name": name, "status": "error", "error": "already exists"})
                continue
            self.keys[name] = Key(_text(item), str(item.get("description", "")))
            results.append({"key_name": name, "status": "success"})
        return {"results": results}, False

    def get_memory(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        results = []
        for full in args["key_names"]:
            name = self._relative(full)
            stored = self.keys.get(name)
            if stored is None:
                results.append({"key_name": name, "status": "error", "error": "not found"})
            else:
                results.append({"key_name": name, "status": "success", "value": stored.text})
        return {"results": results}, False

    def update_memory(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        name = self._relative(args["key_name"])
        if name not in self.keys:
            return {"error": f"memory '{name}' not found"}, True
        self.keys[name].text = _text(args)
        return {"key_name": name, "status": "success"}, False

    def list_keys(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        prefix = self._relative(args.get("prefix", ""))
        names = [name for name in self.keys if name.startswith(prefix)]
        listed = [
            {"key_name": n, "description": self.keys[n].description}
            for n in names[: args.get("limit", 100)]
        ]
        return {"keys": listed}, False

    def search_memories(self, args: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        prefix, query = self._relative(args.get("prefix", "")), str(args["query"]).lower()
        hits: list[dict[str, Any]] = []
        for name, stored in self.keys.items():
            if name.startswith(prefix) and stored.description:
                about = stored.description.lower()
                said = about.split(": ", 1)[-1]  # the text after "[autoresearch] Claim: "
                score = max(_similarity(query, about), _similarity(query, said))
                hits.append({"key_name": name, "score": round(score, 4), "value": stored.text})
        hits.sort(key=lambda hit: -hit["score"])
        return {"results": hits[: args.get("limit", 10)]}, False


def _text(item: Mapping[str, Any]) -> str:
    value = str(item["value"])
    return base64.b64decode(value).decode("utf-8") if item.get("base64") else value


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


# --- the community client's side -----------------------------------------------------------


def request_of(step: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded step as the JSON-RPC body their client sends (values base64)."""
    arguments = json.loads(json.dumps(step["arguments"]))
    for item in arguments.get("items", [arguments]):
        if "text" in item:
            item["value"] = base64.b64encode(item.pop("text").encode("utf-8")).decode("ascii")
    params = {"name": step["tool"], "arguments": arguments}
    return {"jsonrpc": "2.0", "method": "tools/call", "params": params, "id": 1}


def rpc_payload(response: httpx.Response, tool: str) -> tuple[dict[str, Any], bool]:
    """The tool's payload and whether it failed, read as their client reads replies.

    A ``create_memory`` item that reports an error fails the call as a tool error does.
    """
    text = response.text.strip()
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    message = json.loads(lines[-1] if lines else text)
    if "error" in message:
        return {"error": message["error"]}, True
    result = message["result"]
    payload = json.loads(result["content"][0]["text"])
    entries = payload.get("results") if tool == "create_memory" else None
    item_failed = isinstance(entries, list) and any(
        isinstance(e, dict) and e.get("status") == "error" for e in entries
    )
    return payload, result.get("isError") is True or item_failed


def contains(actual: Any, expected: Any) -> bool:
    """Whether ``actual`` holds everything ``expected`` does (dicts by key, lists in order)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) >= len(expected)
            and all(contains(a, e) for a, e in zip(actual, expected, strict=False))
        )
    return bool(actual == expected)


class Poster(Protocol):
    """What :func:`replay` sends with: an ``httpx.Client``, or anything posting alike."""

    def post(self, url: str, /, *, json: Any) -> httpx.Response: ...


def replay(client_for: Callable[[str], Poster], steps: list[dict[str, Any]] | None = None) -> None:
    """Send the recorded session; every reply must hold what the recording relies on."""
    for number, step in enumerate(steps or load_session()["steps"]):
        response = client_for(step["agent"]).post("/", json=request_of(step))
        payload, failed = rpc_payload(response, step["tool"])
        where = f"step {number} ({step['note']})"
        assert failed == bool(step.get("error")), f"{where}: failed={failed}: {payload}"
        if "reply" in step:
            assert contains(payload, step["reply"]), f"{where}: {payload}"
        if step.get("absent"):
            assert all(e.get("status") != "success" for e in payload["results"]), where


@dataclass
class CommunityReader:
    """Reads the org the way their client does: ``status == "success"``, ``json.loads``."""

    client: httpx.Client
    org: str

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        body = {"name": tool, "arguments": arguments}
        request = {"jsonrpc": "2.0", "method": "tools/call", "params": body, "id": 1}
        payload, failed = rpc_payload(self.client.post("/", json=request), tool)
        assert not failed, payload
        return payload

    def get(self, name: str) -> str | None:
        """The value of ``@org/<name>`` as text, or None unless the entry says success."""
        entries = self.call("get_memory", {"key_names": [f"@{self.org}/{name}"]})["results"]
        if entries and entries[0].get("status") == "success":
            return str(entries[0]["value"])
        return None

    def record(self, name: str) -> dict[str, Any]:
        text = self.get(name)
        assert text is not None, f"{name} is not readable as their client reads it"
        found: dict[str, Any] = json.loads(text)
        return found

    def names(self, namespace: str) -> list[str]:
        listed = self.call("list_keys", {"prefix": f"@{self.org}/{namespace}/", "limit": 200})
        return [k["key_name"] if isinstance(k, dict) else k for k in listed["keys"]]

    def similar_claims(self, description: str, now: float) -> list[dict[str, Any]]:
        """Active claims scored >= 0.92 against ``description``, as their dedup check finds."""
        query = {"query": description, "limit": 5, "prefix": f"@{self.org}/claims/"}
        found = []
        for match in self.call("search_memories", query)["results"]:
            value = json.loads(match.get("value", "{}"))
            claimed = datetime.fromisoformat(value.get("claimed_at", ""))
            if match["score"] >= SIMILAR and now - claimed.timestamp() < CLAIM_TTL_S:
                found.append(value)
        return found
