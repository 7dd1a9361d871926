"""SQLite's exact prefix condition: the same keys as ``str.startswith``, case told apart."""

from __future__ import annotations

import sqlite3

import pytest

from autoresearchd.hub.storage.sqlite_statements import prefix_condition, prefix_range

LAST = chr(0x10FFFF)
KEYS = [
    "",
    "a",
    "A",
    "ab",
    "aB",
    "a%",
    "a_",
    "a\\",
    "b",
    "a" + LAST,
    "a" + LAST + "z",
    "a" + LAST + LAST,
    "b" + chr(0xD7FF),
    "b" + chr(0xD7FF) + "x",
    "b" + chr(0xE000),
    "é",
    "éa",
    "\x00",
    "a\x00b",
]


@pytest.mark.parametrize(
    "prefix", ["", "a", "A", "a%", "a_", "a\\", "a" + LAST, LAST, "b" + chr(0xD7FF), "é", "a\x00"]
)
def test_the_condition_selects_exactly_the_keys_that_start_with_the_prefix(prefix: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE k (name TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO k VALUES (?)", [(key,) for key in KEYS])
    under, params = prefix_condition("name", prefix)
    found = {row[0] for row in conn.execute(f"SELECT name FROM k WHERE {under}", params)}
    assert found == {key for key in KEYS if key.startswith(prefix)}
    plan = " ".join(
        str(row)
        for row in conn.execute(f"EXPLAIN QUERY PLAN SELECT name FROM k WHERE {under}", params)
    )
    assert "USING" in plan and "INDEX" in plan  # a range on the index, not a scan


def test_the_range_carries_past_the_last_code_point_and_skips_surrogates() -> None:
    assert prefix_range("ab") == ("ab", "ac")
    assert prefix_range("a" + LAST + LAST) == ("a" + LAST + LAST, "b")
    assert prefix_range("b" + chr(0xD7FF)) == ("b" + chr(0xD7FF), "b" + chr(0xE000))
    assert prefix_range("") == ("", None)
    assert prefix_range(LAST) == (LAST, None)
