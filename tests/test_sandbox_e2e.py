"""The real daemon process runs experiments in the sandbox: each attempt to reach a listener on
the host's loopback or to write outside its run directory fails, is recorded, and the daemon
carries on with its next run."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from autoresearchd.testing import write_plan
from autoresearchd.tracks.prepare import prepare_track

from .daemon_process import DaemonProcess, stored_results, wait_for, write_config

pytestmark = pytest.mark.slow

PROBING_SCRIPT = '''\
"""Tries the network and the disk outside its run directory, then reports."""
import os
import socket

LR = 0.01  # search: log 0.001..0.1

try:
    socket.create_connection(("127.0.0.1", int(os.environ["PROBE_PORT"])), timeout=2).close()
    connected = 1
except OSError:
    connected = 0
try:
    with open(os.environ["PROBE_OUTSIDE"], "w") as file:
        file.write("escaped")
    escaped = 1
except OSError:
    escaped = 0
print("---")
print(f"val_bpb: {2.0 + LR}")
print(f"connected: {connected}")
print(f"escaped: {escaped}")
'''


def test_daemon_runs_children_without_network_or_outside_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    prepare_track("synthetic", data_dir)
    outside = tmp_path / "workspace" / "escaped.txt"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    monkeypatch.setenv("PROBE_PORT", str(server.getsockname()[1]))
    monkeypatch.setenv("PROBE_OUTSIDE", str(outside))
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, [])
    config = write_config(tmp_path, PROBING_SCRIPT, data_dir, sandbox="required")
    db = tmp_path / "state" / "memory.sqlite"
    daemon = DaemonProcess(config, plan_dir, tmp_path / "daemon.log")
    try:
        wait_for(lambda: len(stored_results(db)) >= 3, timeout=60, what="three results")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
        server.close()
    results = stored_results(db)
    assert all(r["status"] in ("keep", "discard") for r in results), results
    assert all(r["metrics"]["connected"] == 0 for r in results)
    assert all(r["metrics"]["escaped"] == 0 for r in results)
    assert not outside.exists()
    ready = [e for e in daemon.events() if e["event"] == "sandbox_ready"]
    assert len(ready) == 1
    assert ready[0]["tool"] == "bwrap" and ready[0]["missing"] == []
