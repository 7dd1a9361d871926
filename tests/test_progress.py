"""The progress picture and the coloured results table."""

from __future__ import annotations

import re
import sys
from datetime import UTC
from pathlib import Path

import anyio
import pytest

from autoresearchd.errors import MissingExtraError
from autoresearchd.memory import SqliteMemory
from autoresearchd.models import Result, Status
from autoresearchd.plot import plot_progress, plotted, running_best
from autoresearchd.report import results_table
from tests.memory.conformance import make_result

from .daemon_process import cli

PNG = b"\x89PNG\r\n\x1a\n"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def history() -> list[Result]:
    """Two agents; bests at t=1 (1.0), t=3 (0.9) and t=6 (0.85); a crash and a worse keep."""
    spec = [
        ("alice", Status.KEEP, 1.0),
        ("bob", Status.DISCARD, 1.05),
        ("alice", Status.KEEP, 0.9),
        ("bob", Status.CRASH, None),
        ("bob", Status.KEEP, 0.95),  # a keep that did not beat the best (another tier's best)
        ("alice", Status.KEEP, 0.85),
        ("alice", Status.TIMEOUT, None),
    ]
    return [
        make_result(agent_id=agent, status=status, val_bpb=bpb, completed_at=1_767_225_600.0 + t)
        for t, (agent, status, bpb) in enumerate(spec)
    ]


def test_running_best_steps_down_at_each_better_keep() -> None:
    steps = running_best(history())
    assert [v for _, v in steps] == [1.0, 0.9, 0.85]
    assert [t - 1_767_225_600.0 for t, _ in steps] == [0, 2, 5]


def test_results_without_val_bpb_are_not_drawn() -> None:
    assert len(plotted(history())) == 5


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "progress.png"
    assert plot_progress(history(), out, title="synthetic") == 5
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_a_missing_matplotlib_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what ImportError looks like
    with pytest.raises(MissingExtraError, match=r"autoresearchd\[plot\]"):
        plot_progress(history(), tmp_path / "p.png", title="t")


def test_progress_command_draws_from_the_memory(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "state"\n[experiment]\ntrack = "synthetic"\n')
    empty = cli("progress", "--config", str(config), "--out", str(tmp_path / "p.png"))
    assert empty.returncode == 1
    assert empty.stderr == "autoresearchd: no results yet for track synthetic\n"

    async def fill() -> None:
        async with SqliteMemory(tmp_path / "state" / "memory.sqlite") as memory:
            for result in history():
                await memory.publish(result.with_(track="synthetic"))

    anyio.run(fill)
    done = cli("progress", "--config", str(config), "--out", str(tmp_path / "p.png"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'p.png'}: 5 runs, 2 without val_bpb"
    assert (tmp_path / "p.png").read_bytes().startswith(PNG)


def test_results_table_colours_rows_by_status_without_moving_columns() -> None:
    results = history()
    plain = results_table(results, track="synthetic", tz=UTC)
    coloured = results_table(results, track="synthetic", tz=UTC, colour=True)
    assert "\x1b[" not in plain
    assert ANSI.sub("", coloured) == plain
    lines = coloured.splitlines()
    assert lines[0].startswith("\x1b[1m")
    assert lines[1].startswith("\x1b[1;32m"), "a keep is bold green"
    assert lines[4].startswith("\x1b[31m"), "a crash is red"
    assert lines[7].startswith("\x1b[33m"), "a timeout is yellow"
    assert "\x1b" not in lines[2], "a discard stays plain"


def test_results_command_stays_plain_when_piped(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "state"\n')

    async def fill() -> None:
        async with SqliteMemory(tmp_path / "state" / "memory.sqlite") as memory:
            await memory.publish(make_result(track="synthetic"))

    anyio.run(fill)
    done = cli("results", "--config", str(config))
    assert done.returncode == 0 and "keep" in done.stdout and "\x1b[" not in done.stdout
