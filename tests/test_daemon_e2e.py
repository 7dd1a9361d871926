"""The real daemon process, end to end, with 2 CPU workers and scripted experiments.

Covers the outcomes (ok, crash, a SIGTERM-ignoring hang, NaN), a clean two-stage
shutdown with no orphans and no lost results, and a SIGKILL while results are still
queued: after a restart each is published exactly once.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from autoresearchd.outbox import Outbox
from autoresearchd.testing import plan_script, plan_steps, write_plan
from autoresearchd.tracks.prepare import prepare_track

from .daemon_process import DaemonProcess, pid_alive, stored_results, wait_for, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


def statuses(db: Path) -> Counter[str]:
    return Counter(r["status"] for r in stored_results(db))


def test_outcomes_then_clean_shutdown(tmp_path: Path, data_dir: Path) -> None:
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, ["ok", "crash", "hang", "nan", "ok", "ok"])
    config = write_config(tmp_path, plan_script(sleep_s=1.5), data_dir)
    db = tmp_path / "state" / "memory.sqlite"
    daemon = DaemonProcess(config, plan_dir, tmp_path / "daemon.log")
    try:
        wait_for(
            lambda: len(stored_results(db)) >= 4 and statuses(db)["timeout"] >= 1,
            timeout=60,
            what="the scripted outcomes to be published",
        )
        # Wait until a run is in flight, then ask for a graceful stop.
        started = len(plan_steps(plan_dir))
        wait_for(lambda: len(plan_steps(plan_dir)) > started, timeout=30, what="a new run")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()

    steps = plan_steps(plan_dir)
    results = stored_results(db)
    by_action = Counter(step[0]["action"] for step in steps)
    assert len(results) == len(steps), "every run that was started has a result"
    found = statuses(db)
    assert found["crash"] >= by_action["crash"]
    assert found["invalid"] == by_action["nan"] == 1
    assert found["timeout"] == by_action["hang"] == 1
    assert found["keep"] + found["discard"] == by_action["ok"]
    nan_errors = [r["error"] for r in results if r["status"] == "invalid"]
    assert nan_errors == ["implausible: val_bpb nan is not finite"], "a NaN claims no score"
    assert Outbox(tmp_path / "state" / "outbox").depth() == 0
    spawned = [r[key] for step in steps for r in step for key in ("pid", "grandchild") if key in r]
    # A SIGKILL lands at once, but the exit itself may take a moment.
    wait_for(
        lambda: not [pid for pid in spawned if pid_alive(pid)], 5, "every child to exit with it"
    )
    events = [e["event"] for e in daemon.events()]
    for name in (
        "daemon_started",
        "worker_started",
        "candidate_proposed",
        "claim_acquired",
        "run_started",
        "run_finished",
        "result_queued",
        "result_published",
        "daemon_stopping",
        "daemon_stopped",
    ):
        assert name in events, name
    # Which worker's script draws which scripted outcome is a race: when the baseline draws
    # the crash, the first improvement must be replicated, and its replicate may draw the NaN.
    assert ("best_improved" in events) == (found["keep"] > 0)


def test_sigkill_with_queued_results_loses_nothing(tmp_path: Path, data_dir: Path) -> None:
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, [])
    config = write_config(tmp_path, plan_script(sleep_s=0.2), data_dir)
    db = tmp_path / "state" / "memory.sqlite"
    outbox = Outbox(tmp_path / "state" / "outbox")
    daemon = DaemonProcess(config, plan_dir, tmp_path / "daemon.log")
    try:
        wait_for(db.exists, timeout=30, what="the memory file")
        wait_for(lambda: len(stored_results(db)) >= 1, timeout=30, what="a first result")
        # Lock the memory so publishing fails transiently and results pile up on disk. Each
        # claim then waits out SQLite's busy timeout, so results arrive slowly: two suffice.
        blocker = sqlite3.connect(db, timeout=30)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            wait_for(
                lambda: outbox.root.exists() and outbox.depth() >= 2,
                timeout=120,
                what="results queued in the outbox",
            )
            daemon.signal(signal.SIGKILL)
            daemon.wait(timeout=10)
        finally:
            blocker.rollback()
            blocker.close()
    finally:
        daemon.kill()
    queued = {r.id for r in outbox.pending()}
    assert len(queued) >= 2

    restarted = DaemonProcess(config, plan_dir, tmp_path / "daemon2.log")
    try:
        wait_for(
            lambda: queued <= {r["id"] for r in stored_results(db)},
            timeout=60,
            what="the queued results to be published after restart",
        )
        restarted.signal(signal.SIGTERM)
        assert restarted.wait(timeout=60) == 0
    finally:
        restarted.kill()
    ids = [r["id"] for r in stored_results(db)]
    assert len(ids) == len(set(ids))
    assert queued <= set(ids)
    published = Counter(
        e["result_id"]
        for e in restarted.events()
        if e["event"] == "result_published" and not e["replay"]
    )
    assert all(published[rid] <= 1 for rid in queued)
    assert outbox.depth() == 0
