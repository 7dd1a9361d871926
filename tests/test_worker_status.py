"""The typed status keeps the JSON shape the control socket, ``status`` and the dashboard read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoresearchd import __version__
from autoresearchd.connectivity import Connectivity
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.report import status_line, status_text
from autoresearchd.runtime import Lifecycle, Runtime, State
from autoresearchd.worker.context import baseline

from .test_worker_network import a_worker


@pytest.mark.anyio
async def test_a_running_device_and_the_daemon_show_every_field_the_readers_expect(
    tmp_path: Path,
) -> None:
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        worker = a_worker(tmp_path, memory)
        worker.current = baseline(worker.config)
        worker.running.started_at, worker.running.run_id = 1000.0, "run-1"
        worker.running.last_val_bpb = 1.5
        device = worker.status(1012.34).to_json()
        assert device == {
            "index": 0,
            "uuid": "cpu-0",
            "name": worker.device.name,
            "kind": "cpu",
            "tier": worker.device.tier,
            "temperature_c": None,
            "state": "running",
            "experiment": {
                "run_id": "run-1",
                "sha256": worker.current.sha256,
                "description": "baseline",
                "started_at": 1000.0,
                "elapsed_s": 12.3,
                "budget_s": worker.config.experiment.time_budget_s,
                "remaining_s": round(worker.config.experiment.time_budget_s - 12.34, 1),
            },
            "last_val_bpb": 1.5,
            "last_stopped_early": None,
            "early_stopping": worker.ctx.stopping.describe("synthetic", worker.device.tier),
            "halted": None,
        }
        runtime = Runtime(
            worker.ctx, [worker], Lifecycle(State.RUNNING, started_at=5.0), Connectivity("sqlite")
        )
        snapshot = await runtime.snapshot()
    assert list(snapshot) == [
        "pid",
        "version",
        "agent",
        "track",
        "state",
        "started_at",
        "best_bpb",
        "outbox_depth",
        "outbox_held",
        "outbox_error",
        "memory",
        "devices",
    ]
    assert (snapshot["pid"], snapshot["version"], snapshot["state"]) == (
        os.getpid(),
        __version__,
        "running",
    )
    assert snapshot["memory"]["backend"] == "sqlite" and snapshot["best_bpb"] is None
    json.dumps(snapshot, allow_nan=False)  # what the control socket sends
    assert status_line(snapshot).startswith("1 CPU worker · 1 running")
    assert "baseline" in status_text(snapshot)
