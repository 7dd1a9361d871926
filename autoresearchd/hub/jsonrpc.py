"""The hub's JSON-RPC envelope: validate a request, and shape its reply or its error.

Requests that are not JSON-RPC get the standard codes (-32700 parse error, -32600 invalid
request, -32601 method not found, -32602 invalid params, also for an unknown tool). Tool
refusals use the server range: -32001 unauthorised, -32003 forbidden, -32004 not found,
-32009 conflict (the key exists, or ``if_match`` did not match; ``data.version`` carries
the current version), -32013 too large, -32029 rate limited, -32050 storage unavailable;
forbidden, not found, conflict and too large are tool errors (``isError``), the others
JSON-RPC errors. A tool's answer travels as JSON text in ``result.content[0].text``
(:mod:`autoresearchd.ensue.envelope`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoresearchd.ensue import envelope
from autoresearchd.ensue.errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    TOOL_ERRORS,
)
from autoresearchd.errors import HubError
from autoresearchd.hub import strictjson
from autoresearchd.hub.strictjson import JsonRefused


class RpcFault(HubError):
    """A JSON-RPC error reply: ``code`` is the JSON-RPC error code, ``data`` its details.

    A fault whose code is a tool error (:data:`~autoresearchd.ensue.errors.TOOL_ERRORS`)
    travels as an MCP ``isError`` result instead, with ``extra`` beside the message.
    """

    def __init__(
        self,
        rpc_code: int,
        message: str,
        data: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=str(rpc_code))
        self.rpc_code = rpc_code
        self.data = dict(data or {})
        self.extra = dict(extra or {})

    @property
    def is_tool_error(self) -> bool:
        return self.rpc_code in TOOL_ERRORS


def error_reply(request_id: Any, fault: RpcFault) -> dict[str, Any]:
    return envelope.error_reply(request_id, fault.rpc_code, str(fault), fault.data)


def result_reply(request_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
    return envelope.result_reply(request_id, envelope.tool_result(payload))


def tool_error_reply(request_id: Any, fault: RpcFault) -> dict[str, Any]:
    """A tool's failure as an MCP ``isError`` result: visible to every MCP client."""
    result = envelope.tool_error(fault.rpc_code, str(fault), fault.data, **fault.extra)
    return envelope.result_reply(request_id, result)


@dataclass(frozen=True, slots=True)
class Message:
    """A validated JSON-RPC request or notification (a notification has no ``id``)."""

    request_id: Any
    method: str
    params: dict[str, Any]
    notification: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """A validated ``tools/call`` request."""

    request_id: Any
    tool: str
    arguments: dict[str, Any]


def parse_message(body: bytes) -> Message:
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
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise RpcFault(INVALID_PARAMS, "invalid params: params must be an object")
    return Message(request_id, message["method"], params, "id" not in message)


def tool_call(message: Message) -> Call:
    """The ``tools/call`` a message asks for; METHOD_NOT_FOUND for any other method."""
    if message.method != "tools/call":
        raise RpcFault(METHOD_NOT_FOUND, f"method not found: {message.method}")
    params = message.params
    if not isinstance(params.get("name"), str):
        raise RpcFault(INVALID_PARAMS, "invalid params: expected {name, arguments}")
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise RpcFault(INVALID_PARAMS, "invalid params: arguments must be an object")
    return Call(message.request_id, params["name"], arguments)


def parse_request(body: bytes) -> Call:
    """A ``tools/call`` request, validated (see :func:`parse_message`)."""
    return tool_call(parse_message(body))


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
