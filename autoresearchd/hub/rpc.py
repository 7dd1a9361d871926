"""The hub's JSON-RPC layer: validate a request, run one Ensue tool, shape the reply.

This speaks the Ensue wire protocol (docs/architecture.md, contract 4): ``tools/call`` with
``create_memory``, ``get_memory``, ``update_memory``, ``list_keys`` and
``search_memories``, plus our ``best_history`` (the audited changes of one best metadata
key, newest first); a tool's answer travels as JSON text in ``result.content[0].text``.
Keys come back with ``verified``: whether their writer was a verified agent then.
Requests that are not JSON-RPC get the standard codes (-32700 parse error, -32600 invalid
request, -32601 method not found, -32602 invalid params). Tool refusals use the
server range: -32001 unauthorised, -32003 forbidden, -32004 not found, -32009 conflict
(the key exists, or ``if_match`` did not match; ``data.version`` carries the current
version), -32013 too large, -32029 rate limited, -32050 storage unavailable.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autoresearchd.errors import HubError
from autoresearchd.hub import strictjson
from autoresearchd.hub.auth import (
    RESULT,
    SHARED_BEST,
    Rules,
    create_policy,
    index_result,
    split_key,
    write_policy,
)
from autoresearchd.hub.store import (
    REASON_EXISTS,
    REASON_NOT_FOUND,
    REASON_VERSION,
    Agent,
    AuditEntry,
    HubStore,
    Memory,
    NewMemory,
    ResultRow,
    decode_text,
)
from autoresearchd.hub.strictjson import JsonRefused

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
UNAUTHORISED = -32001
FORBIDDEN = -32003
NOT_FOUND = -32004
CONFLICT = -32009
TOO_LARGE = -32013
RATE_LIMITED = -32029
UNAVAILABLE = -32050

MAX_ITEMS = 100
MAX_KEYS = 1000
MAX_LIST = 10_000
MAX_KEY_CHARS = 512
DEFAULT_LIMIT = 100
MAX_HISTORY = 1000


class RpcFault(HubError):
    """A JSON-RPC error reply: ``code`` is the JSON-RPC error code, ``data`` its details."""

    def __init__(self, rpc_code: int, message: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, code=str(rpc_code))
        self.rpc_code = rpc_code
        self.data = dict(data or {})


def error_reply(request_id: Any, fault: RpcFault) -> dict[str, Any]:
    error: dict[str, Any] = {"code": fault.rpc_code, "message": str(fault)}
    if fault.data:
        error["data"] = fault.data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_reply(request_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
    text = json.dumps(payload, allow_nan=False)
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {"content": [{"type": "text", "text": text}]},
    }


@dataclass(frozen=True, slots=True)
class Call:
    """A validated ``tools/call`` request."""

    request_id: Any
    tool: str
    arguments: dict[str, Any]


def parse_request(body: bytes) -> Call:
    """Validate the JSON-RPC envelope; raise :class:`RpcFault` with the standard codes."""
    try:
        message = strictjson.loads(body)
    except JsonRefused as exc:
        raise RpcFault(PARSE_ERROR, f"parse error: {exc}") from None
    if not isinstance(message, dict):
        raise RpcFault(INVALID_REQUEST, "invalid request: expected one JSON-RPC object")
    request_id = message.get("id")
    if not _is_request_id(request_id):
        raise RpcFault(INVALID_REQUEST, "invalid request: id must be a string, number or null")
    if message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
        raise RpcFault(INVALID_REQUEST, 'invalid request: needs "jsonrpc": "2.0" and a method')
    if message["method"] != "tools/call":
        raise RpcFault(METHOD_NOT_FOUND, f"method not found: {message['method']}")
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        raise RpcFault(INVALID_PARAMS, "invalid params: expected {name, arguments}")
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise RpcFault(INVALID_PARAMS, "invalid params: arguments must be an object")
    return Call(request_id, params["name"], arguments)


def request_id_of(body: bytes) -> Any:
    """The id of a request, if it has a readable one, for error replies."""
    try:
        message = strictjson.loads(body)
    except JsonRefused:
        return None
    request_id = message.get("id") if isinstance(message, dict) else None
    return request_id if _is_request_id(request_id) else None


def _is_request_id(value: Any) -> bool:
    """JSON-RPC 2.0 ids are strings, numbers or null; anything else is not echoed back."""
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


# --- argument checks ---------------------------------------------------------------------


def _invalid(message: str) -> RpcFault:
    return RpcFault(INVALID_PARAMS, f"invalid params: {message}")


def _arg(args: Mapping[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    if name not in args:
        if default is ...:
            raise _invalid(f"{name} is required")
        return default
    value = args[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _invalid(f"{name} must be a {kind.__name__}")
    return value


def _limit(args: Mapping[str, Any], most: int) -> int:
    limit = _arg(args, "limit", int, DEFAULT_LIMIT)
    if not 1 <= limit <= most:
        raise _invalid(f"limit must be between 1 and {most}")
    return int(limit)


def _key(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_CHARS:
        raise _invalid(f"key_name must be a string of 1 to {MAX_KEY_CHARS} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in value) or split_key(value) is None:
        raise _invalid(f"key_name {value[:80]!r} must look like @org/path, without spaces")
    return value


# --- the tools ---------------------------------------------------------------------------


class Tools:
    """The Ensue tools over a :class:`HubStore`, for one authenticated agent at a time."""

    def __init__(
        self,
        store: HubStore,
        *,
        max_value_bytes: int,
        clock: Callable[[], float],
        rules: Rules | None = None,
    ) -> None:
        self.store = store
        self.max_value_bytes = max_value_bytes
        self.clock = clock
        self.rules = rules or Rules()
        self._orgs: set[str] = set()  # a cache of orgs seen to exist; orgs are never dropped
        self._tools: dict[str, Callable[[Agent, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "create_memory": self.create_memory,
            "get_memory": self.get_memory,
            "update_memory": self.update_memory,
            "list_keys": self.list_keys,
            "search_memories": self.search_memories,
            "best_history": self.best_history,
        }

    async def call(self, agent: Agent, call: Call) -> dict[str, Any]:
        tool = self._tools.get(call.tool)
        if tool is None:
            raise _invalid(f"unknown tool {call.tool!r}")
        return await tool(agent, call.arguments)

    async def _org_key(self, value: Any) -> str:
        key = _key(value)
        org = (split_key(key) or ("", ""))[0]
        if org not in self._orgs:
            if not await self.store.org_exists(org):
                raise RpcFault(NOT_FOUND, f"no organisation @{org} on this hub")
            self._orgs.add(org)
        return key

    def _value(self, args: Mapping[str, Any]) -> tuple[str, bool]:
        value = _arg(args, "value", str)
        is_base64 = _arg(args, "base64", bool, False)
        size = len(value.encode("utf-8"))
        if is_base64:
            try:
                size = len(base64.b64decode(value, validate=True))
            except ValueError:  # binascii.Error, or a non-ASCII character
                raise _invalid("value is not valid base64") from None
        if size > self.max_value_bytes:
            raise RpcFault(TOO_LARGE, f"value of {size} bytes exceeds {self.max_value_bytes}")
        return value, bool(is_base64)

    async def create_memory(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        items = _arg(args, "items", list)
        if not 0 < len(items) <= MAX_ITEMS:
            raise _invalid(f"items must hold 1 to {MAX_ITEMS} entries")
        results = []
        for item in items:
            if not isinstance(item, dict):
                raise _invalid("each item must be an object")
            results.append(await self._create_one(agent, item))
        return {"results": results}

    async def _create_one(self, agent: Agent, item: dict[str, Any]) -> dict[str, Any]:
        key = await self._org_key(item.get("key_name"))
        value, is_base64 = self._value(item)
        description = _arg(item, "description", str, "")
        new = NewMemory(key, value, is_base64, description)
        text = decode_text(value, is_base64)
        result: ResultRow | None = None
        if RESULT.match(_rest(key)):
            result, refusal = index_result(agent, key, text)
            if result is None:
                return _create_error(key, "refused", f"refused: {refusal}")
        outcome = await self.store.create(
            agent,
            new,
            self.clock(),
            policy=create_policy(agent, key, text, self.rules),
            result=result,
            detail=_audit_detail(key, text),
        )
        if outcome.version is not None:
            return {"key_name": key, "status": "created", "version": outcome.version}
        if outcome.reason == REASON_EXISTS:
            return _create_error(key, "exists", "key exists")
        return _create_error(key, "refused", f"refused: {outcome.detail}")

    async def get_memory(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        keys = _arg(args, "key_names", list)
        if not 0 < len(keys) <= MAX_KEYS:
            raise _invalid(f"key_names must hold 1 to {MAX_KEYS} entries")
        names = [_key(key) for key in keys]
        found = await self.store.get(names)
        return {
            "results": [_found(name, memory) for name, memory in zip(names, found, strict=True)]
        }

    async def update_memory(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        key = await self._org_key(args.get("key_name"))
        value, is_base64 = self._value(args)
        if_match = _arg(args, "if_match", int, None)
        new = NewMemory(key, value, is_base64)
        now, text = self.clock(), decode_text(value, is_base64)
        policy = write_policy(agent, key, text, if_match, now, self.rules)
        outcome = await self.store.update(
            agent, new, if_match, policy, now, detail=_audit_detail(key, text)
        )
        if outcome.version is not None:
            return {"key_name": key, "status": "updated", "version": outcome.version}
        if outcome.reason == REASON_NOT_FOUND:
            raise RpcFault(NOT_FOUND, f"{key} does not exist")
        if outcome.reason == REASON_VERSION:
            data = {"reason": REASON_VERSION, "version": outcome.current_version}
            raise RpcFault(CONFLICT, f"{key} is at version {outcome.current_version}", data)
        raise RpcFault(FORBIDDEN, f"refused: {outcome.detail}", {"reason": "refused"})

    async def list_keys(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        prefix = _arg(args, "prefix", str, "")
        found = await self.store.list_keys(prefix, _limit(args, MAX_LIST))
        keys = [_summary(memory) for memory in found]
        return {"keys": keys, "count": len(keys)}

    async def search_memories(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        query = _arg(args, "query", str)
        prefix = _arg(args, "prefix", str, "")
        hits = await self.store.search(query, prefix, _limit(args, MAX_KEYS))
        return {
            "results": [
                {**_summary(hit.memory), **_value_of(hit.memory), "score": round(hit.score, 6)}
                for hit in hits
            ]
        }

    async def best_history(self, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
        key = _key(args.get("key_name"))
        if not SHARED_BEST.match(_rest(key)):
            raise _invalid("best_history reads a best/ key only")
        entries = await self.store.history(key, _limit(args, MAX_HISTORY))
        return {"changes": [_change(entry) for entry in entries]}


def _rest(key: str) -> str:
    """The key without its ``@org/`` prefix."""
    return (split_key(key) or ("", ""))[1]


def _create_error(key: str, code: str, message: str) -> dict[str, Any]:
    return {"key_name": key, "status": "error", "code": code, "error": message}


def _audit_detail(key: str, text: str | None) -> str:
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


def _summary(memory: Memory) -> dict[str, Any]:
    return {
        "key_name": memory.key_name,
        "description": memory.description,
        "version": memory.version,
        "owner": memory.owner,
        "created_at": memory.created_at,
        "updated_at": memory.updated_at,
        "verified": memory.verified,
    }


def _value_of(memory: Memory) -> dict[str, Any]:
    return {"value": memory.value, "base64": memory.is_base64}


def _found(name: str, memory: Memory | None) -> dict[str, Any]:
    if memory is None:
        return {"key_name": name, "status": "not_found"}
    return {**_summary(memory), **_value_of(memory), "status": "success"}
