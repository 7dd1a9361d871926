"""Checks of tool arguments: a key name is refused for any whitespace or unprintable
character, and only for those, whatever the character."""

from __future__ import annotations

import sys

import pytest

from autoresearchd.hub.arguments import MAX_KEY_CHARS, key_name
from autoresearchd.hub.jsonrpc import RpcFault


def _accepted(key: str) -> bool:
    try:
        key_name(key)
    except RpcFault:
        return False
    return True


def test_a_key_name_is_refused_exactly_for_whitespace_and_unprintable_characters() -> None:
    """Every code point, against the rule as written per character."""
    wrong = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if _accepted(f"@o/a{chr(code)}b") == (chr(code).isspace() or not chr(code).isprintable())
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "key", ["", "@o/a b", "@o/a\tb", "@o/a\u00a0b", "@o/a\u2028b", "o/a", "@o", "@/a", "@o/"]
)
def test_a_malformed_key_name_is_refused(key: str) -> None:
    assert not _accepted(key)


def test_a_key_name_may_hold_any_printable_text_up_to_its_limit() -> None:
    key = "@o/" + "é✓-_.:" * 100
    assert _accepted(key[:MAX_KEY_CHARS]) and not _accepted(key[: MAX_KEY_CHARS + 1])
