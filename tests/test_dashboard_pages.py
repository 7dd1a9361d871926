"""The dashboard's pure parts: cursors, diffs and chart marks, without a server."""

from __future__ import annotations

from autoresearchd.dashboard.model import Cursor, Filters, ResultRow, bounded
from autoresearchd.dashboard.pages import MAX_DIFF_LINES, chart_series, diff_lines, when


def row(
    key: str, status: str, bpb: float | None, sha: str, *, provisional: bool = False
) -> ResultRow:
    return ResultRow(key, key, "a", "t", "small", status, provisional, bpb, key, "p", 1.0,
                     1.0, 1, sha, "")  # fmt: skip


def test_a_cursor_survives_its_text_and_refuses_anything_else() -> None:
    cursor = Cursor(1_700_000_000.123456, "bob--lr--abc")
    assert Cursor.parse(cursor.text()) == cursor
    for text in ("", "nope", "1.5", "1.5~", "x~key", "<script>~k"):
        assert Cursor.parse(text) is None, text


def test_filters_become_the_query_that_selects_them() -> None:
    assert Filters(agent="bob", tier="xl").as_query() == {"agent": "bob", "tier": "xl"}


def test_a_limit_is_clamped() -> None:
    assert (bounded(0), bounded(50), bounded(10**9)) == (1, 50, 200)


def test_the_diff_marks_added_and_removed_lines() -> None:
    kinds = [(line.kind, line.text) for line in diff_lines("A = 1\nB = 2\n", "A = 1\nB = 3\n", "r")]
    assert kinds[:3] == [("head", "--- parent/train.py"), ("head", "+++ r/train.py"),
                         ("hunk", "@@ -1,2 +1,2 @@")]  # fmt: skip
    assert ("del", "-B = 2") in kinds and ("add", "+B = 3") in kinds


def test_a_huge_diff_is_cut_and_says_so() -> None:
    lines = diff_lines(None, "".join(f"X{n} = {n}\n" for n in range(3 * MAX_DIFF_LINES)), "r")
    assert len(lines) == MAX_DIFF_LINES + 1
    assert lines[-1].text.endswith("more lines not shown")


def test_chart_marks_replicates_of_kept_sources_apart_from_provisional_runs() -> None:
    rows = [
        row("a", "discard", 1.5, "s1", provisional=True),
        row("b", "keep", 1.4, "s1"),
        row("c", "discard", 1.3, "s2", provisional=True),
        row("d", "crash", None, "s3"),
        row("e", "discard", 1.6, "s4"),
    ]
    series = chart_series(rows, 1.1)
    assert series["mark"] == ["replicate", "keep", "provisional", "run"]
    assert series["count"] == 4 and series["kept"] == 1 and series["floor"] == 1.1
    assert series["best"] == [[1.0, 1.4]] and series["keeps"] == [[1, "b", "b"]]


def test_times_are_shown_in_utc() -> None:
    assert when(0.0) == "1970-01-01 00:00:00Z" and when(None) == ""
