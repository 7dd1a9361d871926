"""A re-creation of the autoresearch-at-home community client, as our tests' stand-in for it.

The community's agents coordinate through an Ensue org with a small ``coordinator.py``.
This module behaves as that client does, from what is known of it, so that the hub and
our daemon can be tested against its habits without its code:

- It speaks JSON-RPC ``tools/call`` over HTTP (httpx), bare JSON or SSE replies, and
  reads ``result.content[0].text`` as JSON. A JSON-RPC error or an ``isError`` result
  raises :class:`ToolError`; a per-item error inside a successful result does not.
- It tests ``status == "success"`` on every ``get_memory`` entry and on the item a claim
  creates, finds entries by their org-relative ``key_name``, and ``json.loads`` the
  value as read: it never decodes base64 itself, although it writes with
  ``"base64": true``.
- It lists keys and builds ``@{org}/{key_name}`` from the names it got.
- An experiment's key is ``<agent>--<slug>--<sha256(description)[:6]>``. The claim
  ``claims/<key>`` holds ``{agent_id, description, experiment_key, claimed_at (ISO 8601),
  expected_duration_seconds, status: "claimed"}``, written with ``embed: true,
  embed_source: "description"`` and the description ``[autoresearch] Claim:
  <description>``; a claim lives :data:`CLAIM_TTL_S` seconds.
- Before claiming, it looks for the same key (claimed or with a result) and searches
  the claims for the description: an active claim scoring at least
  :data:`DEDUP_SIMILARITY` blocks it (so does a result scoring as high).
- It publishes ``results/<key>`` with every field in :data:`RESULT_FIELDS`, then upserts
  the bests it beat (``best/metadata`` + ``best/train_py``, ``best/tier/<tier>/...``,
  ``best/agent/<agent>``): ``update_memory``, and on any error ``create_memory``. It
  prints ``NEW GLOBAL BEST!`` when that create did not raise.
- Hypotheses are ``{agent_id, title, hypothesis, suggested_config, evidence_keys,
  priority, created_at}``; insights ``{agent_id, insight, evidence_keys, posted_at}``.

Everything it printed is kept in :attr:`Coordinator.said`, so tests assert on it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

CLAIM_TTL_S = 900
DEDUP_SIMILARITY = 0.92
RESULT_FIELDS = (
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
)


class ToolError(Exception):
    """A tool call that failed: a JSON-RPC error or an ``isError`` result."""

    def __init__(self, tool: str, message: str, code: int | None = None) -> None:
        super().__init__(f"{tool}: {message}")
        self.tool = tool
        self.code = code


def slugify(text: str, max_len: int = 48) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:max_len].strip("-") or "x"


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def parse_iso(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class Best:
    """A best as the client pulls it: the metadata record and the source."""

    metadata: dict[str, Any]
    train_py: str


class Coordinator:
    """One community agent on the org ``org`` at ``url`` (a JSON-RPC endpoint)."""

    def __init__(
        self,
        url: str,
        org: str,
        api_key: str | None,
        agent_id: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.org = org
        self.agent_id = agent_id
        self.clock = clock
        headers = {"Accept": "application/json, text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(headers=headers, timeout=timeout_s)
        self.said: list[str] = []
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    def say(self, line: str) -> None:
        self.said.append(line)
        print(line)

    # --- the wire ----------------------------------------------------------------------

    def rpc(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            body["params"] = dict(params)
        response = self.http.post(self.url, json=body)
        message = _message(response.text)
        if "error" in message:
            error = message["error"]
            raise ToolError(method, str(error.get("message")), error.get("code"))
        result = message.get("result")
        return result if isinstance(result, dict) else {}

    def call_tool(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        result = self.rpc("tools/call", {"name": name, "arguments": dict(arguments)})
        text = result["content"][0]["text"]
        if result.get("isError"):
            raise ToolError(name, text)
        payload = json.loads(text)
        return payload if isinstance(payload, dict) else {"value": payload}

    def full(self, key_name: str) -> str:
        return f"@{self.org}/{key_name}"

    # --- connecting and reading ---------------------------------------------------------

    def initialize(self) -> dict[str, Any]:
        """The MCP handshake, as MCP clients open a session."""
        result = self.rpc(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "autoresearch-at-home", "version": "1"},
            },
        )
        self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def check_connectivity(self) -> bool:
        self.call_tool("list_keys", {"limit": 1})
        return True

    def list_namespace(self, prefix: str, limit: int = 1000) -> list[str]:
        """The org-relative key names under ``prefix`` (as the client gets them)."""
        listed = self.call_tool("list_keys", {"prefix": prefix, "limit": limit})
        return [str(k["key_name"]) for k in listed.get("keys", [])]

    def get(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The entries whose ``status`` is ``"success"``: asked for as ``@{org}/{name}``,
        found by the org-relative ``key_name`` the reply gives."""
        reply = self.call_tool("get_memory", {"key_names": [self.full(name) for name in names]})
        return {
            entry["key_name"]: entry
            for entry in reply.get("results", [])
            if entry.get("status") == "success"
        }

    def read_records(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every JSON record under ``prefix``, by org-relative name."""
        names = self.list_namespace(prefix)
        if not names:
            return {}
        found = self.get(names)
        records = {}
        for name in names:
            entry = found.get(name)
            if entry is not None:
                records[name] = json.loads(entry["value"])
        return records

    def search(self, query: str, prefix: str = "", limit: int = 10) -> list[dict[str, Any]]:
        arguments: dict[str, Any] = {"query": query, "limit": limit}
        if prefix:
            arguments["prefix"] = prefix
        return list(self.call_tool("search_memories", arguments).get("results", []))

    # --- claims ------------------------------------------------------------------------

    def experiment_key(self, description: str) -> str:
        digest = hashlib.sha256(description.encode("utf-8")).hexdigest()[:6]
        return f"{self.agent_id}--{slugify(description)}--{digest}"

    def blocked(self, description: str) -> str | None:
        """Why ``description`` must not run now, or None: the same key claimed or done, or
        an active claim (or a result) that scores as the same experiment."""
        key = self.experiment_key(description)
        found = self.get([f"claims/{key}", f"results/{key}"])
        if f"results/{key}" in found:
            return f"already done: results/{key}"
        claim = found.get(f"claims/{key}")
        if claim is not None and self._active(json.loads(claim["value"])):
            return f"already claimed: claims/{key}"
        for hit in self.search(description, "claims/", 10):
            record = _record(hit.get("value"))
            if hit.get("score", 0.0) >= DEDUP_SIMILARITY and self._active(record):
                return f"similar claim {hit['key_name']} (score {hit['score']})"
        for hit in self.search(description, "results/", 10):
            if hit.get("score", 0.0) >= DEDUP_SIMILARITY:
                return f"similar result {hit['key_name']} (score {hit['score']})"
        return None

    def _active(self, record: Mapping[str, Any]) -> bool:
        claimed = parse_iso(record.get("claimed_at"))
        return (
            record.get("status") == "claimed"
            and claimed is not None
            and self.clock() - claimed < CLAIM_TTL_S
        )

    def claim_experiment(self, description: str, expected_duration_s: int = 300) -> str | None:
        """Claim ``description``; the experiment key, or None when it is blocked."""
        reason = self.blocked(description)
        if reason is not None:
            self.say(f"SKIP: {reason}")
            return None
        key = self.experiment_key(description)
        record = {
            "agent_id": self.agent_id,
            "description": description,
            "experiment_key": key,
            "claimed_at": iso(self.clock()),
            "expected_duration_seconds": expected_duration_s,
            "status": "claimed",
        }
        item = {
            "key_name": self.full(f"claims/{key}"),
            "description": f"[autoresearch] Claim: {description}",
            "value": b64(json.dumps(record)),
            "base64": True,
            "embed": True,
            "embed_source": "description",
        }
        try:
            reply = self.call_tool("create_memory", {"items": [item]})
        except ToolError as exc:
            self.say(f"CLAIM FAILED: {exc}")
            return None
        status = reply.get("results", [{}])[0].get("status")
        if status != "success":
            self.say(f"CLAIM FAILED: {status}")
            return None
        self.say(f"CLAIMED: {key}")
        return key

    # --- results and bests -------------------------------------------------------------

    def pull_best(self, prefix: str = "best/") -> Best | None:
        found = self.get([f"{prefix}metadata", f"{prefix}train_py"])
        meta = found.get(f"{prefix}metadata")
        source = found.get(f"{prefix}train_py")
        if meta is None or source is None:
            return None
        return Best(json.loads(meta["value"]), str(source["value"]))

    def agent_best(self, agent: str) -> dict[str, Any] | None:
        """An agent's best, found the client's way: list ``best/agent/``, build the name."""
        for name in self.list_namespace("best/agent/"):
            if name == f"best/agent/{agent}":
                entry = self.get([name]).get(name)
                return json.loads(entry["value"]) if entry else None
        return None

    def publish_result(
        self,
        key: str,
        description: str,
        val_bpb: float,
        train_py: str,
        *,
        status: str = "keep",
        vram_tier: str = "24gb",
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish ``results/<key>`` and upsert every best it beats; the record."""
        best = self.pull_best()
        own = self.agent_best(self.agent_id)
        global_bpb = best.metadata.get("val_bpb") if best else None
        own_bpb = own.get("val_bpb") if own else None
        record = {
            "agent_id": self.agent_id,
            "val_bpb": val_bpb,
            "memory_gb": 11.5,
            "vram_tier": vram_tier,
            "vram_total_gb": 24.0,
            "status": status,
            "commit": "0" * 7,
            "description": description,
            "train_py": train_py,
            "repo_url": "https://example.org/autoresearch",
            "branch": f"autoresearch/{self.agent_id}",
            "commit_url": "https://example.org/autoresearch/commit/0000000",
            "completed_at": iso(self.clock()),
            "delta_vs_best": _delta(val_bpb, global_bpb),
            "global_best_at_publish": global_bpb,
            "delta_vs_own_best": _delta(val_bpb, own_bpb),
            "agent_best_at_publish": own_bpb,
            **dict(extra or {}),
        }
        self.call_tool("create_memory", {"items": [self._item(f"results/{key}", record)]})
        self.say(f"PUBLISHED: results/{key}")
        if status == "keep":
            self._upsert_bests(key, record, global_bpb, own_bpb)
        return record

    def _upsert_bests(
        self, key: str, record: dict[str, Any], global_bpb: Any, own_bpb: Any
    ) -> None:
        meta = {
            "agent_id": self.agent_id,
            "val_bpb": record["val_bpb"],
            "description": record["description"],
            "experiment_key": key,
            "updated_at": record["completed_at"],
        }
        if not isinstance(own_bpb, int | float) or record["val_bpb"] < own_bpb:
            if self.upsert("best/agent/" + self.agent_id, meta):
                self.say("NEW PERSONAL BEST!")
        if not isinstance(global_bpb, int | float) or record["val_bpb"] < global_bpb:
            moved = self.upsert("best/metadata", meta)
            moved = self.upsert("best/train_py", record["train_py"], raw=True) and moved
            tier = record["vram_tier"]
            self.upsert(f"best/tier/{tier}/metadata", meta)
            if moved:
                self.say("NEW GLOBAL BEST!")

    def upsert(self, key_name: str, value: Any, *, raw: bool = False) -> bool:
        """``update_memory``, and on any error ``create_memory``; False if both raised."""
        text = value if raw else json.dumps(value)
        try:
            self.call_tool(
                "update_memory",
                {"key_name": self.full(key_name), "value": b64(text), "base64": True},
            )
            return True
        except ToolError:
            pass
        try:
            self.call_tool("create_memory", {"items": [self._item(key_name, text, raw=True)]})
            return True
        except ToolError as exc:
            self.say(f"UPSERT FAILED: {key_name}: {exc}")
            return False

    def _item(self, key_name: str, value: Any, *, raw: bool = False) -> dict[str, Any]:
        text = value if raw else json.dumps(value)
        return {"key_name": self.full(key_name), "value": b64(text), "base64": True}

    # --- hypotheses and insights ---------------------------------------------------------

    def post_hypothesis(
        self,
        title: str,
        hypothesis: str,
        suggested_config: Mapping[str, Any],
        evidence_keys: list[str],
        priority: int = 3,
    ) -> str:
        key = f"hypotheses/{self.agent_id}--{slugify(title)}--{_digest(title)}"
        record = {
            "agent_id": self.agent_id,
            "title": title,
            "hypothesis": hypothesis,
            "suggested_config": dict(suggested_config),
            "evidence_keys": evidence_keys,
            "priority": priority,
            "created_at": iso(self.clock()),
        }
        item = {**self._item(key, record), "description": f"[autoresearch] Hypothesis: {title}"}
        self.call_tool("create_memory", {"items": [{**item, "embed": True}]})
        return key

    def post_insight(self, insight: str, evidence_keys: list[str]) -> str:
        key = f"insights/{self.agent_id}--{slugify(insight)}--{_digest(insight)}"
        record = {
            "agent_id": self.agent_id,
            "insight": insight,
            "evidence_keys": evidence_keys,
            "posted_at": iso(self.clock()),
        }
        item = {**self._item(key, record), "description": f"[autoresearch] Insight: {insight}"}
        self.call_tool("create_memory", {"items": [{**item, "embed": True}]})
        return key


def _message(text: str) -> dict[str, Any]:
    """The JSON-RPC message of a reply: bare JSON, or the last SSE ``data:`` line."""
    lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    message = json.loads(lines[-1] if lines else text)
    return message if isinstance(message, dict) else {}


def _record(value: Any) -> dict[str, Any]:
    try:
        record = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _delta(value: float, reference: Any) -> float | None:
    return value - reference if isinstance(reference, int | float) else None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:6]
