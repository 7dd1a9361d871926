"""Formatting results and bests for people: aligned tables and parser-friendly JSON."""

from __future__ import annotations

import json
import math
from datetime import UTC

from autoresearchd.models import Best, Result, Status
from autoresearchd.report import (
    align,
    bests_json,
    bests_table,
    format_bpb,
    format_delta,
    format_time,
    results_json,
    results_table,
    run_labels,
    status_text,
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


def replication(*statuses: tuple[Status, bool], source: str = "LR = 2\n") -> list[Result]:
    """Runs of one source, oldest first: (status, provisional) each, a minute apart."""
    return [
        make_result(
            train_py=source, status=status, provisional=provisional, completed_at=T0 + 60 * i
        )
        for i, (status, provisional) in enumerate(statuses)
    ]


def test_a_replication_that_holds_up_reads_provisional_replicates_then_keep() -> None:
    runs = replication((Status.DISCARD, True), (Status.DISCARD, True), (Status.KEEP, False))
    other = make_result(status=Status.DISCARD, completed_at=T0 + 30)  # never looked better
    labels = run_labels([*runs, other], replicates=2)
    assert [labels[r.id] for r in runs] == ["provisional", "replicate 1/2", "keep, replicate 2/2"]
    assert other.id not in labels


def test_a_replication_that_fails_reads_rejected_not_discard() -> None:
    runs = replication((Status.DISCARD, True), (Status.DISCARD, True), (Status.DISCARD, False))
    table = results_table(list(reversed(runs)), track="synthetic", tz=UTC, replicates=2)
    statuses = [line.split("  ")[2].strip() for line in table.splitlines()[1:]]
    assert statuses == ["rejected, replicate 2/2", "replicate 1/2", "provisional"]


def test_a_crash_ends_a_replication_and_says_which_replicate() -> None:
    runs = replication((Status.DISCARD, True), (Status.CRASH, False))
    assert run_labels(runs)[runs[1].id] == "crash, replicate 1"


def test_replicates_shown_are_numbered_from_runs_read_but_not_shown() -> None:
    first, *rest = replication((Status.DISCARD, True), (Status.DISCARD, True), (Status.KEEP, False))
    newest_first = list(reversed(rest))
    table = results_table(newest_first, track="synthetic", tz=UTC, replicates=2, older=[first])
    assert len(table.splitlines()) == 3
    assert "keep, replicate 2/2" in table and "provisional" not in table


def test_runs_awaiting_replication_are_dim_in_colour() -> None:
    runs = replication((Status.DISCARD, True), (Status.KEEP, False))
    lines = results_table(list(reversed(runs)), track="t", colour=True).splitlines()
    assert lines[1].startswith("\x1b[1;32m") and lines[2].startswith("\x1b[2m")


def test_a_hubs_unscored_baseline_reads_unscored() -> None:
    text = bests_table("synthetic", make_best(val_bpb=math.inf), {}, tz=UTC)
    assert text.splitlines()[1].split()[:4] == ["track", "synthetic", "unscored", "alice"]
    assert "inf" not in text


def test_a_run_past_its_budget_reads_evaluating() -> None:
    device = {"index": 0, "uuid": "cpu-0", "state": "running", "last_val_bpb": None}
    run = {"description": "LR 1 → 2", "elapsed_s": 301.0, "remaining_s": 0.0}
    snapshot = {
        "version": "0.1.0",
        "pid": 1,
        "agent": "a",
        "track": "t",
        "state": "running",
        "started_at": T0,
        "best_bpb": None,
        "outbox_depth": 0,
        "memory": {"backend": "sqlite"},
        "devices": [{**device, "experiment": run}],
    }
    row = status_text(snapshot, tz=UTC).splitlines()[-1]
    assert row.split()[:5] == ["0", "cpu-0", "running", "5m01s", "evaluating"]
