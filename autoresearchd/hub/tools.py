"""The Ensue tools the hub serves over JSON-RPC, one authenticated agent at a time.

This speaks the Ensue wire protocol as the community's clients do
(:mod:`autoresearchd.ensue` owns its envelope, codes and key layout;
:mod:`~autoresearchd.hub.jsonrpc` validates requests and shapes replies): ``tools/call``
with ``create_memory``, ``get_memory``, ``update_memory``, ``delete_memory``,
``list_keys``, ``search_memories`` and ``discover_memories``, the org tools ``share``,
``create_invite`` and ``claim_invite`` (:mod:`~autoresearchd.hub.org_tools`), plus our
``best_history`` (the audited changes of one best metadata key, newest first) and
``publish_result`` (a result, its markers and the bests it moves in one transaction:
:mod:`~autoresearchd.hub.batch`). What the community's clients rely on:

- ``get_memory`` entries say ``"status": "success"`` (or ``not_found``) and carry values
  decoded: a value written as base64 comes back as its text (``base64: false``), unless
  it is binary.
- Key names may be org-relative (``results/x``, in the hub's ``hub.org``) or full
  (``@org/results/x``). Replies name keys org-relative, as the public network does:
  ``get_memory``, ``create_memory`` (whose items say ``"status": "success"``),
  ``update_memory`` and ``delete_memory`` relative to ``hub.org``, listings and search
  to the org listed; a key of another org keeps its full name. ``.hub/`` is the hub's
  own, never listed.
- A tool that fails answers an MCP ``isError`` result whose JSON text carries the
  ``code``, ``error`` and ``data`` (a ``create_memory`` whose every item failed too, with
  the per-item ``results``), so a client that reads no per-item status still sees it.
- ``search_memories`` scores in [0, 1] by :mod:`autoresearchd.hub.search`, the same on
  every store.
- Without a key, the reads (``get_memory``, ``list_keys``, ``search_memories``,
  ``discover_memories``) see what orgs made public (:mod:`autoresearchd.hub.invites`).

Keys come back with ``verified``: whether their writer was a verified agent then.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from autoresearchd.ensue import values
from autoresearchd.ensue.errors import (
    CONFLICT,
    FORBIDDEN,
    NOT_FOUND,
    TOO_LARGE,
    UNAUTHORISED,
)
from autoresearchd.ensue.keys import SHARED_BEST, full_name, is_public, relative, split_key
from autoresearchd.hub import invites, search
from autoresearchd.hub.arguments import arg, invalid, key_name, limit
from autoresearchd.hub.jsonrpc import Call, RpcFault
from autoresearchd.hub.org_tools import OrgTools
from autoresearchd.hub.policy import RESULT, Rules, create_policy, index_result, write_policy
from autoresearchd.hub.standing import rules_for
from autoresearchd.hub.storage.protocol import (
    REASON_EXISTS,
    REASON_NOT_FOUND,
    REASON_VERSION,
    HubStore,
)
from autoresearchd.hub.storage.rows import (
    Agent,
    AuditEntry,
    Hit,
    Memory,
    NewMemory,
    ResultRow,
    decode_text,
)

MAX_ITEMS = 100
MAX_KEYS = 1000
MAX_LIST = 10_000
MAX_HISTORY = 1000


# --- the tools ---------------------------------------------------------------------------

Tool = Callable[[Agent | None, dict[str, Any]], Awaitable[dict[str, Any]]]
#: The tools a request without a key may call: reads, filtered to public namespaces.
PUBLIC_TOOLS = frozenset({"get_memory", "list_keys", "search_memories", "discover_memories"})


class Tools:
    """The Ensue tools over a :class:`HubStore`, for one authenticated agent at a time.

    ``default_org`` is the org an org-relative key name (``results/x``) belongs to; with
    none, key names must be full (``@org/results/x``). The agent is None for a request
    without a key, which may read only what orgs made public.
    """

    def __init__(
        self,
        store: HubStore,
        *,
        max_value_bytes: int,
        clock: Callable[[], float],
        rules: Rules | None = None,
        default_org: str = "",
    ) -> None:
        self.store = store
        self.max_value_bytes = max_value_bytes
        self.clock = clock
        self.rules = rules or Rules()
        self.default_org = default_org
        self._orgs: set[str] = set()  # a cache of orgs seen to exist; orgs are never dropped
        orgs = OrgTools(store, clock, default_org, self.check_org)
        self._tools: dict[str, Tool] = {
            "create_memory": self._agent(self.create_memory),
            "get_memory": self.get_memory,
            "update_memory": self._agent(self.update_memory),
            "delete_memory": self._agent(self.delete_memory),
            "list_keys": self.list_keys,
            "search_memories": self.search_memories,
            "discover_memories": self.discover_memories,
            "best_history": self._agent(self.best_history),
            "share": self._agent(orgs.share),
            "create_invite": self._agent(orgs.create_invite),
            "claim_invite": self._agent(orgs.claim_invite),
        }

    def extend(
        self, name: str, tool: Callable[[Tools, Agent, dict[str, Any]], Awaitable[dict[str, Any]]]
    ) -> None:
        """Add an extension tool for agents with a key (:mod:`~autoresearchd.hub.batch`'s
        ``publish_result``). Extensions build on this module, so they register themselves
        from outside it rather than being imported here."""
        self._tools[name] = self._agent(lambda agent, args: tool(self, agent, args))

    @property
    def names(self) -> frozenset[str]:
        """The tools served, extensions included."""
        return frozenset(self._tools)

    async def call(self, agent: Agent | None, call: Call) -> dict[str, Any]:
        tool = self._tools.get(call.tool)
        if tool is None:
            raise invalid(f"unknown tool {call.tool!r}")
        if agent is None and call.tool != "discover_memories":
            await self._check_public(call)
        return await tool(agent, call.arguments)

    async def _check_public(self, call: Call) -> None:
        """A request without a key reads an org that made something public; else it is
        unauthorised, so a client that forgot its key on a private hub is told so."""
        args = call.arguments
        if call.tool == "get_memory":
            names = args.get("key_names")
            first = names[0] if isinstance(names, list) and names else None
            org = (split_key(self._full(first)) or ("", ""))[0] if first else ""
        else:
            org = self._prefix(args)[1]
        if call.tool not in PUBLIC_TOOLS or not org:
            raise RpcFault(UNAUTHORISED, "missing Authorization: Bearer <key>")
        if not await invites.public_prefixes(self.store, org):
            raise RpcFault(UNAUTHORISED, f"@{org} shares nothing: send Authorization: Bearer <key>")

    @staticmethod
    def _agent(
        tool: Callable[[Agent, dict[str, Any]], Awaitable[dict[str, Any]]],
    ) -> Tool:
        """``tool``, refused to a request without a key."""

        async def authenticated(agent: Agent | None, args: dict[str, Any]) -> dict[str, Any]:
            if agent is None:
                raise RpcFault(UNAUTHORISED, "missing Authorization: Bearer <key>")
            return await tool(agent, args)

        return authenticated

    # --- names ---------------------------------------------------------------------------

    def _full(self, value: Any) -> str:
        """A key name as given (full or org-relative), as a validated full name."""
        if isinstance(value, str) and not value.startswith("@") and self.default_org:
            value = full_name(self.default_org, value)
        return key_name(value)

    def shown(self, key: str) -> str:
        """A full key name as replies give it: relative to the hub's org when it lies in
        it (the community's clients build ``@{org}/{key_name}`` from it), else full."""
        return relative(key, self.default_org) if self.default_org else key

    def _prefix(self, args: Mapping[str, Any]) -> tuple[str, str]:
        """A listing's full prefix and the org its names are relative to."""
        prefix = arg(args, "prefix", str, "")
        if not prefix.startswith("@"):
            prefix = full_name(self.default_org, prefix) if self.default_org else prefix
        org = prefix[1:].split("/", 1)[0] if prefix.startswith("@") else ""
        return prefix, org

    async def org_key(self, value: Any) -> str:
        """A key name a write may name: full, valid, outside ``.hub/``, of an org that exists."""
        key = self._full(value)
        org, rest = split_key(key) or ("", "")
        if invites.is_reserved(rest):
            raise RpcFault(FORBIDDEN, f"{rest.split('/')[0]}/ is reserved for the hub")
        await self.check_org(org)
        return key

    async def check_org(self, org: str) -> None:
        """Refuse (NOT_FOUND) an org this hub does not have."""
        if org not in self._orgs:
            if not await self.store.org_exists(org):
                raise RpcFault(NOT_FOUND, f"no organisation @{org} on this hub")
            self._orgs.add(org)

    async def _readable(self, agent: Agent | None, memories: list[Memory]) -> list[Memory]:
        """What ``agent`` may see of ``memories``: never ``.hub/``; without a key, only the
        namespaces their orgs made public."""
        shown = [m for m in memories if not invites.is_reserved_key(m.key_name)]
        if agent is not None:
            return shown
        public: dict[str, tuple[str, ...]] = {}
        readable = []
        for memory in shown:
            org, rest = split_key(memory.key_name) or ("", "")
            if org not in public:
                public[org] = await invites.public_prefixes(self.store, org)
            if is_public(rest, public[org]):
                readable.append(memory)
        return readable

    async def _rules_for(self, agent: Agent, key: str) -> Rules:
        """The rules for ``agent``'s write of ``key``: a trusted agent's best needs one
        confirmation fewer (:mod:`autoresearchd.hub.standing`)."""
        org, rest = split_key(key) or ("", key)
        if agent.is_admin or not SHARED_BEST.match(rest) or not rest.endswith("metadata"):
            return self.rules
        return await rules_for(self.store, org, agent.name, self.rules)

    def checked_value(self, args: Mapping[str, Any]) -> tuple[str, bool]:
        """The ``value`` and ``base64`` arguments, checked to decode and to fit the limit."""
        value = arg(args, "value", str)
        is_base64 = arg(args, "base64", bool, False)
        size = values.size_of(value, bool(is_base64))
        if size is None:
            raise invalid("value is not valid base64")
        if size > self.max_value_bytes:
            raise RpcFault(TOO_LARGE, f"value of {size} bytes exceeds {self.max_value_bytes}")
        return value, bool(is_base64)

    # --- writes --------------------------------------------------------------------------

    async def create_memory(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        items = arg(args, "items", list)
        if not 0 < len(items) <= MAX_ITEMS:
            raise invalid(f"items must hold 1 to {MAX_ITEMS} entries")
        results = []
        for item in items:
            if not isinstance(item, dict):
                raise invalid("each item must be an object")
            results.append(await self._create_one(agent, item))
        failed = [r for r in results if r["status"] == "error"]
        if failed and len(failed) == len(results):
            raise _create_failed(results)
        return {"results": results}

    async def _create_one(self, agent: Agent, item: dict[str, Any]) -> dict[str, Any]:
        given = item.get("key_name")
        key = await self.org_key(given)
        value, is_base64 = self.checked_value(item)
        description = arg(item, "description", str, "")
        new = NewMemory(key, value, is_base64, description)
        text = decode_text(value, is_base64)
        result: ResultRow | None = None
        if RESULT.match(_rest(key)):
            result, refusal = index_result(agent, key, text)
            if result is None:
                return _create_error(self.shown(key), "refused", f"refused: {refusal}")
        outcome = await self.store.create(
            agent,
            new,
            self.clock(),
            policy=create_policy(agent, key, text, await self._rules_for(agent, key)),
            result=result,
            detail=audit_detail(key, text),
        )
        if outcome.version is not None:
            return {"key_name": self.shown(key), "status": "success", "version": outcome.version}
        if outcome.reason == REASON_EXISTS:
            return _create_error(self.shown(key), "exists", "key exists")
        return _create_error(self.shown(key), "refused", f"refused: {outcome.detail}")

    async def update_memory(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        given = args.get("key_name")
        key = await self.org_key(given)
        value, is_base64 = self.checked_value(args)
        if_match = arg(args, "if_match", int, None)
        new = NewMemory(key, value, is_base64)
        now, text = self.clock(), decode_text(value, is_base64)
        rules = await self._rules_for(agent, key)
        policy = write_policy(agent, key, text, if_match, now, rules)
        outcome = await self.store.update(
            agent, new, if_match, policy, now, detail=audit_detail(key, text)
        )
        if outcome.version is not None:
            return {"key_name": self.shown(key), "status": "updated", "version": outcome.version}
        if outcome.reason == REASON_NOT_FOUND:
            raise RpcFault(NOT_FOUND, f"{given} does not exist", {"reason": REASON_NOT_FOUND})
        if outcome.reason == REASON_VERSION:
            data = {"reason": REASON_VERSION, "version": outcome.current_version}
            raise RpcFault(CONFLICT, f"{given} is at version {outcome.current_version}", data)
        raise RpcFault(FORBIDDEN, f"refused: {outcome.detail}", {"reason": "refused"})

    async def delete_memory(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        given = args.get("key_name")
        key = await self.org_key(given)
        rest = _rest(key)
        if RESULT.match(rest) or SHARED_BEST.match(rest):
            raise RpcFault(FORBIDDEN, f"{given} is kept: results and shared bests are evidence")
        (current,) = await self.store.get([key])
        if current is None:
            raise RpcFault(NOT_FOUND, f"{given} does not exist", {"reason": REASON_NOT_FOUND})
        if current.owner != agent.name or not await self.store.delete(agent, key, self.clock()):
            raise RpcFault(FORBIDDEN, f"{given} belongs to {current.owner}", {"reason": "owner"})
        return {"key_name": self.shown(key), "status": "deleted"}

    # --- reads ---------------------------------------------------------------------------

    async def get_memory(self, agent: Agent | None, args: dict[str, Any]) -> dict[str, Any]:
        keys = arg(args, "key_names", list)
        if not 0 < len(keys) <= MAX_KEYS:
            raise invalid(f"key_names must hold 1 to {MAX_KEYS} entries")
        names = [self._full(key) for key in keys]
        found = await self.store.get(names)
        shown = await self._readable(agent, [m for m in found if m is not None])
        visible = {memory.key_name for memory in shown}
        return {
            "results": [
                _found(self.shown(name), memory if memory and memory.key_name in visible else None)
                for name, memory in zip(names, found, strict=True)
            ]
        }

    async def list_keys(self, agent: Agent | None, args: dict[str, Any]) -> dict[str, Any]:
        prefix, org = self._prefix(args)
        found = await self._readable(
            agent, await self.store.list_keys(prefix, limit(args, MAX_LIST))
        )
        keys = [_summary(memory, org) for memory in found]
        return {"keys": keys, "count": len(keys)}

    async def search_memories(self, agent: Agent | None, args: dict[str, Any]) -> dict[str, Any]:
        query = arg(args, "query", str)
        prefix, org = self._prefix(args)
        return {"results": await self._search(agent, query, prefix, org, limit(args, MAX_KEYS))}

    async def discover_memories(self, agent: Agent | None, args: dict[str, Any]) -> dict[str, Any]:
        """Search what orgs made public, across the hub (or one ``org``); full names."""
        query = arg(args, "query", str, "")
        org = arg(args, "org", str, "")
        prefix = f"@{org}/" if org else "@"
        hits = await self._search(None, query, prefix, "", limit(args, MAX_KEYS))
        return {"results": hits}

    async def _search(
        self, agent: Agent | None, query: str, prefix: str, org: str, limit: int
    ) -> list[dict[str, Any]]:
        many = search.candidates(limit, MAX_KEYS)
        if query.strip():
            found = await self.store.search(query, prefix, many)
        else:
            found = [Hit(m, 0.0) for m in await self.store.list_keys(prefix, many)]
        shown = await self._readable(agent, [hit.memory for hit in found])
        visible = {memory.key_name for memory in shown}
        hits = search.rank(query, [hit for hit in found if hit.memory.key_name in visible], limit)
        return [
            {**_summary(hit.memory, org), **_value_of(hit.memory), "score": hit.score}
            for hit in hits
        ]

    async def best_history(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        key = self._full(args.get("key_name"))
        if not SHARED_BEST.match(_rest(key)):
            raise invalid("best_history reads a best/ key only")
        entries = await self.store.history(key, limit(args, MAX_HISTORY))
        return {"changes": [_change(entry) for entry in entries]}


def _create_failed(results: list[dict[str, Any]]) -> RpcFault:
    """Every item failed: a tool error, so a client that reads no per-item status sees it."""
    codes = {r.get("code") for r in results}
    code = CONFLICT if codes == {"exists"} else FORBIDDEN
    first = results[0]
    message = f"{first.get('key_name')}: {first.get('error')}"
    if len(results) > 1:
        message += f" (and {len(results) - 1} more items failed)"
    reason = "exists" if code == CONFLICT else "refused"
    return RpcFault(code, message, {"reason": reason}, {"results": results})


def _rest(key: str) -> str:
    """The key without its ``@org/`` prefix."""
    return (split_key(key) or ("", ""))[1]


def _create_error(key: Any, code: str, message: str) -> dict[str, Any]:
    return {"key_name": key, "status": "error", "code": code, "error": message}


def audit_detail(key: str, text: str | None) -> str:
    """What the audit log keeps of a write: a best's whole metadata, else nothing."""
    rest = _rest(key)
    return text or "" if SHARED_BEST.match(rest) and rest.endswith("metadata") else ""


def _change(entry: AuditEntry) -> dict[str, Any]:
    try:
        # Non-finite numbers (NaN, 1e999) become null: replies are strict JSON.
        metadata = (
            json.loads(entry.detail, parse_constant=lambda _: None, parse_float=_finite_or_none)
            if entry.detail
            else {}
        )
    except (ValueError, RecursionError):  # the admin may have written anything
        metadata = {}
    return {
        "at": entry.at,
        "agent": entry.agent,
        "action": entry.action,
        "version": entry.version,
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def _finite_or_none(literal: str) -> float | None:
    number = float(literal)
    return number if math.isfinite(number) else None


def _summary(memory: Memory, org: str = "") -> dict[str, Any]:
    """A key's listing entry; its name relative to ``org`` when it lies in it."""
    return {
        "key_name": relative(memory.key_name, org) if org else memory.key_name,
        "description": memory.description,
        "version": memory.version,
        "owner": memory.owner,
        "created_at": memory.created_at,
        "updated_at": memory.updated_at,
        "verified": memory.verified,
    }


def _value_of(memory: Memory) -> dict[str, Any]:
    """A value as clients read it: decoded text, or base64 for a value that is not text."""
    text = memory.text
    if text is None:
        return {"value": memory.value, "base64": True}
    return {"value": text, "base64": False}


def _found(name: str, memory: Memory | None) -> dict[str, Any]:
    """One ``get_memory`` entry, its key named ``name``."""
    if memory is None:
        return {"key_name": name, "status": "not_found"}
    return {**_summary(memory), **_value_of(memory), "key_name": name, "status": "success"}
