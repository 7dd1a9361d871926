"""Helpers to run the real daemon as a separate process, the way a user would.

Used by the end-to-end tests: write a config and a workspace, start
``python -m autoresearchd run``, read its JSON log lines and its SQLite memory.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from autoresearchd.testing import PLAN_ENV

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, script: str, data_dir: Path, **experiment: Any) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    (workspace / "train.py").write_text(script)
    settings = {
        "time_budget_s": 2.0,
        "grace_s": 1.0,
        "kill_grace_s": 1.0,
        "replicates": 1,
        # The scripted plan lives outside the run directory, where a sandboxed child may not
        # write; tests/test_sandbox_e2e.py runs the daemon with the sandbox on.
        "sandbox": "off",
        **experiment,
    }
    lines = [
        "[daemon]",
        'agent = "tester"',
        f'state_dir = "{tmp_path / "state"}"',
        'log_format = "json"',
        "shutdown_grace_s = 30.0",
        "health_interval_s = 0.5",
        "[devices]",
        'gpus = "none"',
        "cpu_workers = 2",
        "[experiment]",
        f'workspace = "{workspace}"',
        f'data_dir = "{data_dir}"',
        *(f"{key} = {json.dumps(value)}" for key, value in settings.items()),
    ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    """A running ``autoresearchd run`` with its log captured to a file."""

    def __init__(self, config: Path, plan_dir: Path, log_path: Path) -> None:
        env = {**os.environ, PLAN_ENV: str(plan_dir)}
        self.log_path = log_path
        self._log = open(log_path, "ab")  # closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearchd", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stored_results(db: Path) -> list[dict[str, Any]]:
    """Every result in the SQLite memory, read straight from the file."""
    if not db.exists():
        return []
    with closing(sqlite3.connect(db, timeout=30)) as conn:
        try:
            rows = conn.execute("SELECT record FROM results").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the daemon is still creating the schema
                return []
            raise
    return [json.loads(row[0]) for row in rows]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs: a zombie waiting for its (new) parent to reap it does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]  # the name in parentheses may hold spaces
    return state not in ("Z", "X")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``autoresearchd ARGS`` from the repository root, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "autoresearchd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
