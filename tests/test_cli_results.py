"""The ``results`` and ``best`` commands, run as a user runs them, on a memory we fill."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from autoresearchd.config_loader import load_config
from autoresearchd.memory import SqliteMemory
from autoresearchd.models import Result, Status
from tests.memory.conformance import make_result

from .daemon_process import cli as cli  # re-exported for the best-history tests

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\nstate_dir = "state"\n[experiment]\ntrack = "synthetic"\n')
    return path


def memory_path(config: Path) -> Path:
    return config.parent / "state" / "memory.sqlite"


def fill(config: Path, *results: Result) -> None:
    async def publish_all() -> None:
        async with SqliteMemory(memory_path(config)) as memory:
            for result in results:
                await memory.publish(result)

    anyio.run(publish_all)


@pytest.fixture
def history(config: Path) -> list[Result]:
    """Three results on the configured track (oldest first) and one on another track."""
    results = [
        make_result(val_bpb=1.0, vram_tier="xl", completed_at=100.0, description="baseline"),
        make_result(
            status=Status.DISCARD,
            val_bpb=1.01,
            completed_at=200.0,
            delta_vs_best=0.01,
            description="LR 1 → 2",
        ),
        make_result(
            val_bpb=0.98,
            vram_tier="small",
            completed_at=300.0,
            delta_vs_best=-0.02,
            agent_id="bob",
            description="LR 1 → 0.5",
        ),
    ]
    fill(config, *results, make_result(track="other", completed_at=400.0))
    return results


def test_results_json_lists_newest_first_without_source(
    config: Path, history: list[Result]
) -> None:
    done = cli("results", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert [r["id"] for r in records] == [r.id for r in reversed(history)]
    required = {
        "id",
        "agent_id",
        "status",
        "val_bpb",
        "description",
        "train_py_sha256",
        "completed_at",
    }
    for record in records:
        assert required <= record.keys()
        assert "train_py" not in record
    assert records[0]["agent_id"] == "bob" and records[0]["val_bpb"] == 0.98


def test_results_json_full_round_trips_every_field(config: Path, history: list[Result]) -> None:
    done = cli("results", "--config", str(config), "--json", "--full", "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert [Result.from_record(r) for r in json.loads(done.stdout)] == [history[-1]]


def test_results_limit_and_track(config: Path, history: list[Result]) -> None:
    limited = json.loads(cli("results", "--config", str(config), "--json", "--limit", "2").stdout)
    assert [r["id"] for r in limited] == [history[2].id, history[1].id]
    other = json.loads(cli("results", "--config", str(config), "--json", "--track", "other").stdout)
    assert [r["track"] for r in other] == ["other"]


def test_results_table_shows_one_row_per_result(config: Path, history: list[Result]) -> None:
    done = cli("results", "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["TIME", "AGENT", "STATUS", "VAL_BPB", "DELTA", "DESCRIPTION"]
    assert len(lines) == 1 + len(history)
    assert lines[1].split()[2:6] == ["bob", "keep", "0.980000", "-0.020000"]
    assert lines[1].endswith("LR 1 → 0.5")
    assert lines[3].split()[2:6] == ["alice", "keep", "1.000000", "-"]


def test_best_shows_track_and_tier_bests(config: Path, history: list[Result]) -> None:
    done = cli("best", "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[:5] == ["track", "synthetic", "0.980000", "bob", history[2].id]
    assert [line.split()[:3] for line in lines[2:]] == [
        ["tier", "small", "0.980000"],
        ["tier", "xl", "1.000000"],
    ]


def test_best_json(config: Path, history: list[Result]) -> None:
    done = cli("best", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["track"] == "synthetic"
    assert report["best"]["result_id"] == history[2].id and "train_py" not in report["best"]
    assert sorted(report["tiers"]) == ["small", "xl"]
    full = json.loads(cli("best", "--config", str(config), "--json", "--full").stdout)
    assert full["best"]["train_py"] == history[2].train_py


def test_best_without_a_keep_result_says_so(config: Path) -> None:
    fill(config, make_result(status=Status.CRASH, val_bpb=None))
    done = cli("best", "--config", str(config))
    assert (done.returncode, done.stdout) == (0, "no best yet for track synthetic\n")


def test_reading_a_missing_memory_creates_nothing(config: Path) -> None:
    for args, expected in [
        (("results",), "no results yet for track synthetic\n"),
        (("results", "--json"), "[]\n"),
        (("best",), "no best yet for track synthetic\n"),
    ]:
        done = cli(*args, "--config", str(config))
        assert (done.returncode, done.stdout) == (0, expected), done.stderr
    done = cli("best", "--config", str(config), "--json")
    assert json.loads(done.stdout) == {"track": "synthetic", "best": None, "tiers": {}}
    assert not (config.parent / "state").exists()


def test_corrupt_memory_is_one_line_on_stderr(config: Path) -> None:
    memory_path(config).parent.mkdir()
    memory_path(config).write_bytes(b"not a database " * 200)
    done = cli("results", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(memory_path(config)) in done.stderr


def test_incomplete_ensue_config_is_refused_with_one_line(config: Path) -> None:
    config.write_text('[memory]\nbackend = "ensue"\nurl = "https://example.org/mcp"\n')
    done = cli("best", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.strip().endswith('memory.org: expected a value when backend = "ensue"')


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_results_limit_must_be_positive(config: Path, limit: str) -> None:
    done = cli("results", "--config", str(config), "--limit", limit)
    assert done.returncode == 2
    assert "expected a whole number >= 1" in done.stderr


def test_results_mark_provisional_runs_and_replicates(config: Path) -> None:
    """A replication that failed: the provisional run, one replicate, then the rejection,
    each marked, beside a plain discard that never looked better."""
    source = "LR = 7\n"
    runs = [
        make_result(train_py=source, status=Status.DISCARD, provisional=provisional, completed_at=t)
        for t, provisional in ((100.0, True), (200.0, True), (300.0, False))
    ]
    fill(config, *runs, make_result(status=Status.DISCARD, completed_at=400.0))
    done = cli("results", "--config", str(config))
    assert done.returncode == 0, done.stderr
    statuses = [line.split("  ")[2].strip() for line in done.stdout.splitlines()[1:]]
    most = load_config(config).experiment.replicates  # the /N is the configured maximum
    assert statuses == [
        "discard",
        f"rejected, replicate 2/{most}",
        f"replicate 1/{most}",
        "provisional",
    ]
    shown = cli("results", "--config", str(config), "--limit", "2")
    assert f"rejected, replicate 2/{most}" in shown.stdout
    assert "provisional" not in shown.stdout
