"""The shared Ensue protocol package: envelopes, both error shapes, keys and values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import autoresearchd
from autoresearchd.ensue import envelope, keys, values
from autoresearchd.ensue.errors import CONFLICT, FORBIDDEN, NOT_FOUND, TOOL_FAILED


def test_a_tool_request_is_a_json_rpc_tools_call() -> None:
    assert envelope.tool_request("list_keys", {"limit": 1}, 7) == {
        "jsonrpc": "2.0",
        "method": "tools/call",
        "params": {"name": "list_keys", "arguments": {"limit": 1}},
        "id": 7,
    }
    assert "id" not in envelope.request("notifications/initialized", None, None)


def test_a_result_round_trips_through_read_reply() -> None:
    reply = envelope.read_reply(envelope.result_reply(1, envelope.tool_result({"keys": []})))
    assert reply == envelope.Reply({"keys": []}) and not reply.failed


def test_a_tool_error_carries_its_code_data_and_extra_fields() -> None:
    result = envelope.tool_error(CONFLICT, "key exists", {"reason": "exists"}, results=[1])
    assert result["isError"] is True
    reply = envelope.read_reply(envelope.result_reply(1, result))
    assert reply.error_code == CONFLICT and reply.error_message == "key exists"
    assert reply.error_data == {"reason": "exists"} and reply.payload["results"] == [1]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Key already exists: claims/x", CONFLICT),
        ("memory not found", NOT_FOUND),
        ("permission denied", FORBIDDEN),
        ("something broke", TOOL_FAILED),
    ],
)
def test_a_plain_text_tool_error_reads_by_its_words(text: str, code: int) -> None:
    result = {"content": [{"type": "text", "text": text}], "isError": True}
    message = {"jsonrpc": "2.0", "id": 1, "result": result}
    reply = envelope.read_reply(message)
    assert reply.error_code == code and reply.error_message == text


def test_a_json_rpc_error_is_read_with_its_data() -> None:
    reply = envelope.read_reply(envelope.error_reply(3, -32009, "at version 2", {"version": 2}))
    assert (reply.error_code, reply.error_data) == (-32009, {"version": 2})


def test_per_item_errors_are_found_in_a_successful_result() -> None:
    payload = {
        "results": [
            {"key_name": "a", "status": "created"},
            {"key_name": "b", "status": "error", "code": "exists", "error": "key exists"},
            {"key_name": "c", "status": "error", "error": "Key already exists"},
        ]
    }
    found = envelope.item_errors(payload)
    assert [(e.key_name, e.code, e.rpc_code) for e in found] == [
        ("b", "exists", CONFLICT),
        ("c", "exists", CONFLICT),
    ]


def test_sse_and_bare_replies_parse_alike() -> None:
    message = {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert envelope.parse_message(f"event: message\ndata: {json.dumps(message)}\n\n") == message
    assert envelope.parse_message(json.dumps(message)) == message
    with pytest.raises(ValueError, match="no JSON-RPC object"):
        envelope.parse_message("<html>")


def test_values_round_trip_and_refuse_bad_base64() -> None:
    text = "print('héllo')\n"
    assert values.decode(values.encode(text), True) == text
    assert values.decode(text, False) == text
    assert values.decode("not base64!", True) is None
    assert values.decode(values.encode("x")[:-1], True) is None
    assert values.size_of(values.encode(text), True) == len(text.encode())
    assert values.size_of("%%", True) is None


def test_names_convert_between_full_and_org_relative() -> None:
    assert keys.full_name("org", "best/metadata") == "@org/best/metadata"
    assert keys.full_name("org", "@other/x") == "@other/x"
    assert keys.relative("@org/best/metadata", "org") == "best/metadata"
    assert keys.relative("@other/x", "org") == "@other/x"
    assert keys.split_key("@org/a/b") == ("org", "a/b") and keys.split_key("a/b") is None


def test_the_community_experiment_key() -> None:
    description = "Raise the learning rate to 0.04"
    digest = keys.short_hash(description, 6)
    assert keys.claim_key("alice", description) == (
        f"claims/alice--raise-the-learning-rate-to-0-04--{digest}"
    )
    assert keys.result_key("alice", description).startswith("results/alice--")


def test_other_tracks_never_use_the_bare_best_keys() -> None:
    assert keys.best_metadata("nanogpt", "nanogpt") == "best/metadata"
    assert keys.best_train_py("synthetic", "nanogpt") == "tracks/synthetic/best/train_py"
    assert keys.best_metadata("synthetic", "nanogpt", "24GB") == (
        "tracks/synthetic/best/tier/24gb/metadata"
    )
    assert keys.agent_best("bob", "nanogpt", "nanogpt") == "best/agent/bob"
    assert keys.track_of_best("tracks/synthetic/best/metadata") == "synthetic"
    assert keys.track_of_best("best/metadata") is None


def test_public_namespaces() -> None:
    shared = ("results/", "leaderboard")
    assert keys.is_public("results/a--b--c", shared) and keys.is_public("leaderboard", shared)
    assert not keys.is_public("claims/a", shared) and not keys.is_public("resultsx", shared)


def test_the_hub_and_the_client_build_no_envelope_or_value_of_their_own() -> None:
    """The package is the protocol's one owner: the hub and our client import it."""
    root = Path(autoresearchd.__file__).parent
    # A dict literal (the comma) builds an envelope; a message quoting one does not.
    owned = re.compile(r'b64encode\(|b64decode\(|"jsonrpc": "2\.0",|"method": "tools/call",')
    found = [
        f"{path.relative_to(root)}: {match.group()}"
        for folder in ("hub", "memory")
        for path in sorted((root / folder).rglob("*.py"))
        for match in owned.finditer(path.read_text(encoding="utf-8"))
    ]
    assert found == []
