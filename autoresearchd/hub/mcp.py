"""The MCP side of the hub: the ``initialize`` handshake and ``tools/list`` with schemas.

A standard MCP client (the MCP Python SDK's streamable HTTP client, as the Ensue CLI
uses) POSTs ``initialize``, then the ``notifications/initialized`` notification, then
``tools/list`` and ``tools/call``. The hub answers each POST with one JSON body
(``application/json``, which streamable HTTP allows in place of an event stream) and
keeps no session: every call carries its own ``Authorization``, so any replica serves
any request. A GET (the optional server-to-client stream) is 405, which the spec
allows. The protocol version is the client's when this module knows it, else the
newest it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoresearchd import __version__

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
SERVER_NAME = "autoresearchd-hub"
INSTRUCTIONS = (
    "An Ensue-compatible collective memory for autoresearch swarms. Keys are"
    " org-relative (results/..., best/metadata) or full (@org/...)."
)
#: Methods answered without a key: the handshake carries no data.
OPEN_METHODS = frozenset({"initialize", "ping", "tools/list"})


def initialize(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``initialize`` result for a client that asked with ``params``."""
    asked = params.get("protocolVersion")
    version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[-1]
    return {
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": {"name": SERVER_NAME, "version": __version__},
        "instructions": INSTRUCTIONS,
    }


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


_KEY = {"type": "string", "description": "org-relative (results/x) or full (@org/results/x)"}
_TEXT = {"type": "string"}
_LIMIT = {"type": "integer", "minimum": 1}
_ITEM = _schema(
    {
        "key_name": _KEY,
        "value": {"type": "string", "description": "text, or base64 when base64 is true"},
        "base64": {"type": "boolean"},
        "description": _TEXT,
        "embed": {"type": "boolean", "description": "index the item for search_memories"},
        "embed_source": {"type": "string", "enum": ["value", "description"]},
    },
    ("key_name", "value"),
)

TOOLS: tuple[dict[str, Any], ...] = (
    {
        "name": "create_memory",
        "description": "Create keys that do not exist yet (one result per item).",
        "inputSchema": _schema(
            {"items": {"type": "array", "items": _ITEM, "minItems": 1, "maxItems": 100}},
            ("items",),
        ),
    },
    {
        "name": "get_memory",
        "description": "Read keys; each entry has status success or not_found.",
        "inputSchema": _schema(
            {"key_names": {"type": "array", "items": _KEY, "minItems": 1}}, ("key_names",)
        ),
    },
    {
        "name": "update_memory",
        "description": "Overwrite a key you own; if_match makes it a compare-and-set.",
        "inputSchema": _schema(
            {
                "key_name": _KEY,
                "value": _TEXT,
                "base64": {"type": "boolean"},
                "if_match": {"type": "integer"},
            },
            ("key_name", "value"),
        ),
    },
    {
        "name": "delete_memory",
        "description": "Delete a key you own (results and shared bests are kept).",
        "inputSchema": _schema({"key_name": _KEY}, ("key_name",)),
    },
    {
        "name": "list_keys",
        "description": "List keys under a prefix, oldest first; names are org-relative.",
        "inputSchema": _schema({"prefix": _TEXT, "limit": _LIMIT}),
    },
    {
        "name": "search_memories",
        "description": "Find keys by text; score in [0, 1], 1 for identical text.",
        "inputSchema": _schema({"query": _TEXT, "prefix": _TEXT, "limit": _LIMIT}, ("query",)),
    },
    {
        "name": "discover_memories",
        "description": "Search what orgs on this hub have made public; full @org names.",
        "inputSchema": _schema({"query": _TEXT, "org": _TEXT, "limit": _LIMIT}),
    },
    {
        "name": "best_history",
        "description": "The audited changes of one best metadata key, newest first.",
        "inputSchema": _schema({"key_name": _KEY, "limit": _LIMIT}, ("key_name",)),
    },
    {
        "name": "publish_result",
        "description": (
            "Publish a result, its markers and the bests it beats in one transaction"
            " (an extension: without it, publish with create_memory and update_memory)."
        ),
        "inputSchema": _schema(
            {
                "result": _schema(
                    {
                        "key_names": {
                            "type": "array",
                            "items": _KEY,
                            "minItems": 1,
                            "maxItems": 4,
                            "description": "results/ keys; the record lands at the first free",
                        },
                        "value": _ITEM["properties"]["value"],
                        "base64": {"type": "boolean"},
                        "description": _TEXT,
                    },
                    ("key_names", "value"),
                ),
                "markers": {"type": "array", "items": _ITEM, "maxItems": 8},
                "bests": {
                    "type": "array",
                    "maxItems": 8,
                    "items": _schema(
                        {
                            "metadata_key": _KEY,
                            "value": _ITEM["properties"]["value"],
                            "base64": {"type": "boolean"},
                            "train_py_key": _KEY,
                            "train_py": {"type": "string", "description": "base64 with base64"},
                            "org_track": {
                                "type": "boolean",
                                "description": "the org's own track is this result's",
                            },
                        },
                        ("metadata_key", "value"),
                    ),
                },
            },
            ("result",),
        ),
    },
    {
        "name": "share",
        "description": "Make results/, best/ or leaderboard public (readable without a key).",
        "inputSchema": _schema(
            {
                "action": {"type": "string", "enum": ["make_public", "make_private"]},
                "prefix": {"type": "string", "enum": ["results/", "best/", "leaderboard"]},
                "org": _TEXT,
            },
            ("action", "prefix"),
        ),
    },
    {
        "name": "create_invite",
        "description": "Create an invite token that verifies the agents who claim it.",
        "inputSchema": _schema(
            {"org": _TEXT, "uses": _LIMIT, "ttl_s": {"type": "number", "exclusiveMinimum": 0}}
        ),
    },
    {
        "name": "claim_invite",
        "description": "Claim an invite: your agent joins the org, verified.",
        "inputSchema": _schema({"token": _TEXT}, ("token",)),
    },
)


def tools_list() -> dict[str, Any]:
    return {"tools": [dict(tool) for tool in TOOLS]}
