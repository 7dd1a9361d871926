"""The JSON-RPC 2.0 envelope of Ensue calls, and the MCP ``tools/call`` result inside it.

A call is ``{"jsonrpc": "2.0", "id", "method": "tools/call", "params": {"name",
"arguments"}}``. A tool's answer is ``result.content[0].text``, JSON text. A tool that
failed answers a result with ``"isError": true``; our hub's error text is JSON too,
``{"error": <message>, "code": <int>, "data": {...}}`` plus whatever the tool reports
(``create_memory`` adds its per-item ``results``), while other servers may send plain
text. Protocol errors are JSON-RPC errors (``{"error": {"code", "message", "data"}}``).

:func:`read_reply` turns any of these into one :class:`Reply`; :func:`item_errors` reads
the per-item errors of a successful result, so a client handles both error shapes.
Replies may come as bare JSON or as server-sent events (``data:`` lines);
:func:`parse_message` reads both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoresearchd.ensue.errors import (
    CONFLICT,
    FORBIDDEN,
    ITEM_CODES,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    TOOL_FAILED,
)

JSONRPC = "2.0"
TOOLS_CALL = "tools/call"
#: How plain-text tool errors from servers that send no code read, first match wins.
_TEXT_CODES = (
    # An MCP server answers a tool it lacks with an isError text ("Unknown tool: x"), not a
    # JSON-RPC error: a client probing for an extension must read that as "no such tool".
    (re.compile(r"unknown tool|no such tool|tool \S+ not found", re.I), METHOD_NOT_FOUND),
    (re.compile(r"already exists|\bexists\b", re.I), CONFLICT),
    (re.compile(r"not found|does not exist|no such", re.I), NOT_FOUND),
    (re.compile(r"forbidden|not allowed|permission|refused|denied", re.I), FORBIDDEN),
)


# --- building -----------------------------------------------------------------------------

#: ``json.dumps(payload, allow_nan=False)``, with its encoder built once (a hub encodes
#: every reply's payload).
_ENCODE_PAYLOAD = json.JSONEncoder(allow_nan=False).encode


def request(method: str, params: Mapping[str, Any] | None, request_id: Any) -> dict[str, Any]:
    """A JSON-RPC request; ``request_id`` None makes it a notification (no ``id``)."""
    message: dict[str, Any] = {"jsonrpc": JSONRPC, "method": method}
    if params is not None:
        message["params"] = dict(params)
    if request_id is not None:
        message["id"] = request_id
    return message


def tool_request(tool: str, arguments: Mapping[str, Any], request_id: Any) -> dict[str, Any]:
    """A ``tools/call`` request for ``tool``."""
    return request(TOOLS_CALL, {"name": tool, "arguments": dict(arguments)}, request_id)


def tool_result(payload: Mapping[str, Any], *, is_error: bool = False) -> dict[str, Any]:
    """The MCP result object of a tool: its payload as JSON text, flagged when it failed."""
    text = _ENCODE_PAYLOAD(payload)
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def tool_error(
    code: int, message: str, data: Mapping[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """An ``isError`` result for a tool that failed: ``code`` and ``data`` travel in the text."""
    payload: dict[str, Any] = {"error": message, "code": code, **extra}
    if data:
        payload["data"] = dict(data)
    return tool_result(payload, is_error=True)


def result_reply(request_id: Any, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": JSONRPC, "id": request_id, "result": dict(result)}


def error_reply(
    request_id: Any, code: int, message: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = dict(data)
    return {"jsonrpc": JSONRPC, "id": request_id, "error": error}


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A tool's answer: ``payload`` on success, else the error code, message and data.

    A failed tool's JSON text, when it has some, is kept in ``payload`` too (our hub's
    ``create_memory`` reports its per-item ``results`` there).
    """

    payload: dict[str, Any]
    error_code: int | None = None
    error_message: str = ""
    error_data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.error_code is not None


@dataclass(frozen=True, slots=True)
class ItemError:
    """One per-item error in a successful result: its key, text code and message."""

    key_name: str
    code: str
    message: str

    @property
    def rpc_code(self) -> int:
        """The tool-level code that means the same (CONFLICT for ``exists``)."""
        return ITEM_CODES.get(self.code, TOOL_FAILED)


def parse_message(text: str) -> dict[str, Any]:
    """The JSON-RPC message in ``text``, with or without an SSE ``data:`` prefix."""
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    for candidate in [*reversed(data), text] if data else [text]:
        try:
            message = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(message, dict):
            return message
    raise ValueError("no JSON-RPC object in the reply")


def read_reply(message: Mapping[str, Any]) -> Reply:
    """A JSON-RPC reply as a :class:`Reply`; ValueError when it is neither result nor error."""
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        data = error.get("data")
        return Reply(
            {},
            code if isinstance(code, int) and not isinstance(code, bool) else TOOL_FAILED,
            str(error.get("message", "")),
            data if isinstance(data, dict) else {},
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise ValueError("the reply has neither result nor error")
    content = result.get("content")
    first = content[0] if isinstance(content, list) and content else None
    text = first.get("text") if isinstance(first, dict) else None
    if not isinstance(text, str):
        raise ValueError("the reply has no result.content[0].text")
    payload = _text_payload(text)
    if result.get("isError") is True:
        return _tool_failure(payload, text)
    return Reply(payload)


def _text_payload(text: str) -> dict[str, Any]:
    """A result's text as an object: its JSON object, else the text or value it holds."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"text": text}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _tool_failure(payload: dict[str, Any], text: str) -> Reply:
    code = payload.get("code")
    message = payload.get("error")
    data = payload.get("data")
    if not isinstance(code, int) or isinstance(code, bool):
        code = text_code(str(message) if isinstance(message, str) else text)
    return Reply(
        payload,
        code,
        message if isinstance(message, str) else text,
        data if isinstance(data, dict) else {},
    )


def text_code(message: str) -> int:
    """The code a plain-text tool error stands for, by its words; TOOL_FAILED if unknown."""
    for pattern, code in _TEXT_CODES:
        if pattern.search(message):
            return code
    return TOOL_FAILED


def item_errors(payload: Mapping[str, Any]) -> list[ItemError]:
    """The per-item errors in a result's ``results`` list (``status: "error"`` entries)."""
    entries = payload.get("results")
    found = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("status") != "error":
            continue
        message = str(entry.get("error") or entry.get("message") or "")
        code = entry.get("code")
        found.append(
            ItemError(
                str(entry.get("key_name", "")),
                code if isinstance(code, str) else _item_code(message),
                message,
            )
        )
    return found


def _item_code(message: str) -> str:
    code = text_code(message)
    return next((item for item, rpc in ITEM_CODES.items() if rpc == code), "")
