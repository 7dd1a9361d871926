"""Formatting results and bests for people: aligned tables and parser-friendly JSON."""

from __future__ import annotations

import json
import math
from datetime import UTC

from autoresearchd.models import Best, Status
from autoresearchd.report import (
    align,
    bests_json,
    bests_table,
    format_bpb,
    format_delta,
    format_time,
    results_json,
    results_table,
)
from tests.memory.conformance import make_result

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def make_best(tier: str | None = None, val_bpb: float = 0.95) -> Best:
    return Best(
        track="synthetic",
        tier=tier,
        val_bpb=val_bpb,
        train_py="LR = 1\n",
        train_py_sha256="ab" * 32,
        result_id="run-1",
        agent_id="alice",
        updated_at=T0,
    )


def test_results_json_leaves_out_the_source_unless_full() -> None:
    result = make_result()
    (short,) = results_json([result])
    (full,) = results_json([result], full=True)
    assert "train_py" not in short
    assert full == result.to_record()
    assert {k: v for k, v in full.items() if k != "train_py"} == short


def test_results_json_turns_non_finite_numbers_into_null() -> None:
    result = make_result(
        status=Status.CRASH, val_bpb=math.nan, metrics={"loss": math.inf, "steps": 3.0}
    )
    (record,) = results_json([result])
    assert record["val_bpb"] is None
    assert record["metrics"] == {"loss": None, "steps": 3.0}
    json.dumps(record, allow_nan=False)


def test_results_table_has_aligned_columns_in_order() -> None:
    results = [
        make_result(
            agent_id="alice",
            val_bpb=0.9512345,
            delta_vs_best=-0.0021,
            completed_at=T0,
            description="MATRIX_LR 0.04 → 0.05",
        ),
        make_result(
            agent_id="bob-the-long",
            status=Status.CRASH,
            val_bpb=None,
            completed_at=T0 + 61,
            description="DEPTH 8 → 9",
        ),
    ]
    lines = results_table(results, track="synthetic", tz=UTC).splitlines()
    assert lines[0].split() == ["TIME", "AGENT", "STATUS", "VAL_BPB", "DELTA", "DESCRIPTION"]
    assert lines[1].split() == [
        "2026-01-01",
        "00:00:00",
        "alice",
        "keep",
        "0.951234",
        "-0.002100",
        "MATRIX_LR",
        "0.04",
        "→",
        "0.05",
    ]
    assert lines[2].split()[:6] == ["2026-01-01", "00:01:01", "bob-the-long", "crash", "-", "-"]
    words = ("DESCRIPTION", "MATRIX_LR", "DEPTH")
    starts = {line.index(word) for line, word in zip(lines, words, strict=True)}
    assert len(starts) == 1


def test_results_table_says_when_there_is_nothing() -> None:
    assert results_table([], track="shakespeare") == "no results yet for track shakespeare"


def test_bests_table_lists_track_then_tiers() -> None:
    text = bests_table(
        "synthetic",
        make_best(),
        {"small": make_best("small", 0.97), "xl": make_best("xl")},
        tz=UTC,
    )
    lines = text.splitlines()
    assert lines[0].split() == ["SCOPE", "VAL_BPB", "AGENT", "RESULT", "SHA256", "UPDATED"]
    assert lines[1].split() == [
        "track",
        "synthetic",
        "0.950000",
        "alice",
        "run-1",
        "ab" * 6,
        "2026-01-01",
        "00:00:00",
    ]
    assert lines[2].split()[:3] == ["tier", "small", "0.970000"]
    assert lines[3].split()[:2] == ["tier", "xl"]


def test_bests_table_says_when_there_is_no_best() -> None:
    assert bests_table("synthetic", None, {}) == "no best yet for track synthetic"


def test_bests_json_shape_with_and_without_source() -> None:
    best, tiers = make_best(), {"xl": make_best("xl")}
    short = bests_json("synthetic", best, tiers)
    assert short["track"] == "synthetic"
    assert short["best"]["val_bpb"] == 0.95 and "train_py" not in short["best"]
    assert short["tiers"]["xl"]["tier"] == "xl"
    full = bests_json("synthetic", best, tiers, full=True)
    assert full["best"] == best.to_record()
    assert bests_json("synthetic", None, {}) == {"track": "synthetic", "best": None, "tiers": {}}


def test_number_and_time_formats() -> None:
    assert format_bpb(None) == "-" and format_bpb(0.5) == "0.500000"
    assert format_bpb(math.nan) == "nan"
    assert format_delta(0.0012) == "+0.001200" and format_delta(None) == "-"
    assert format_time(T0, UTC) == "2026-01-01 00:00:00"


def test_align_pads_all_but_the_last_column() -> None:
    assert align([("a", "bb", "c"), ("ccc", "d", "")]) == "a    bb  c\nccc  d"
