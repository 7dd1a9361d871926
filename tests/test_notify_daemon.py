"""The daemon speaks sd_notify: READY, STATUS, WATCHDOG only while healthy, RELOADING, STOPPING.

A real unix datagram socket stands in for systemd's ``NOTIFY_SOCKET``; the first test
runs the real daemon process, the others drive the supervisor's notify loop in-process
with workers made to look wedged.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.daemon import Daemon
from autoresearchd.gpus import Gpus
from autoresearchd.memory import SqliteMemory
from autoresearchd.models import Candidate, Device
from autoresearchd.notify import Notifier
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.runtime import Runtime, State
from autoresearchd.testing import FakeNvml, plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.worker.context import WorkerContext
from autoresearchd.worker.loop import Worker

from .daemon_process import DaemonProcess, wait_for, write_config


class Listener:
    """Collects every datagram sent to a unix socket, in arrival order, on a thread."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.messages: list[dict[str, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536).decode()
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def keys(self) -> list[str]:
        """One name per message: its first field (READY, STATUS, WATCHDOG, ...)."""
        return [next(iter(m)) for m in self.messages]

    def count(self, key: str) -> int:
        return sum(key in m for m in self.messages)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    found = Listener(tmp_path / "notify.sock")
    yield found
    found.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


@pytest.mark.slow
def test_daemon_process_notifies_systemd_in_order(
    tmp_path: Path, data_dir: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY, periodic WATCHDOG and STATUS, RELOADING then READY on SIGHUP, STOPPING on SIGTERM."""
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, [])
    config = write_config(tmp_path, plan_script(sleep_s=0.5), data_dir)
    monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # pings every 0.5 s
    daemon = DaemonProcess(config, plan_dir, tmp_path / "daemon.log")
    try:
        wait_for(lambda: listener.count("WATCHDOG") >= 3, timeout=60, what="watchdog pings")
        wait_for(
            lambda: any("2 running" in m.get("STATUS", "") for m in listener.messages),
            timeout=30,
            what="a STATUS line with both workers running",
        )
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: listener.count("READY") >= 2, timeout=30, what="READY after reload")
        pings = listener.count("WATCHDOG")
        wait_for(lambda: listener.count("WATCHDOG") > pings, timeout=10, what="pings after reload")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
    keys = listener.keys()
    assert keys[0] == "READY", keys
    assert "2 CPU workers" in listener.messages[0]["STATUS"]
    reloading = keys.index("RELOADING")
    assert keys[:reloading].count("WATCHDOG") >= 3
    assert keys.index("READY", 1) > reloading, "READY follows RELOADING"
    assert int(listener.messages[reloading]["MONOTONIC_USEC"]) > 0
    stopping = keys.index("STOPPING")
    assert stopping > reloading
    assert "SIGTERM" in listener.messages[stopping]["STATUS"]
    assert keys.count("STATUS") >= 2, "the status line is kept up to date"


# -- health, in-process --------------------------------------------------------------


def make_daemon(tmp_path: Path, data_dir: Path, notify_path: str) -> tuple[Daemon, Runtime]:
    """A daemon and a runtime of two CPU workers, built but not serving."""
    config_path = write_config(tmp_path, plan_script(), data_dir)
    notifier = Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
    daemon = Daemon(config_path, notifier=notifier)
    config = daemon.config
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    memory = SqliteMemory(config.memory.path)
    ctx = WorkerContext(
        config=config,
        memory=memory,
        outbox=outbox,
        publisher=Publisher(outbox, memory),
        gpus=Gpus(FakeNvml()),
    )
    workers = [Worker(Device.cpu(i), ctx) for i in range(2)]
    daemon.lifecycle.state = State.RUNNING
    runtime = Runtime(ctx, workers, daemon.lifecycle, daemon.connectivity)
    runtime.publisher_alive = True
    return daemon, runtime


def wedge(worker: Worker) -> None:
    """Make ``worker`` look stuck in a run that started long ago."""
    worker.current = Candidate(source="LR = 1\n", parent_sha256=None, description="stuck")
    worker.running.started_at = time.time() - 100_000


async def notify_for(daemon: Daemon, runtime: Runtime, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await daemon._notify_loop(runtime)


def test_healthy_daemon_has_no_problem(tmp_path: Path, data_dir: Path) -> None:
    _, runtime = make_daemon(tmp_path, data_dir, str(tmp_path / "unused.sock"))
    assert runtime.unhealthy() is None
    wedge(runtime.workers[0])
    assert runtime.unhealthy() is None, "one wedged worker of two is not a dead daemon"


def test_unhealthy_reasons(tmp_path: Path, data_dir: Path) -> None:
    """Wedged workers, a dead publisher, a stalled loop or a stopped daemon are unhealthy."""
    daemon, runtime = make_daemon(tmp_path, data_dir, str(tmp_path / "unused.sock"))
    for worker in runtime.workers:
        wedge(worker)
    assert "wedged" in (runtime.unhealthy() or "")
    runtime.workers[0].running.started_at = time.time()
    runtime.publisher_alive = False
    assert "publisher" in (runtime.unhealthy() or "")
    runtime.publisher_alive = True
    assert "stalled" in (runtime.unhealthy(lag_s=12.0, interval_s=10.0) or "")
    daemon.lifecycle.state = State.STOPPED
    assert "stopped" in (runtime.unhealthy() or "")


@pytest.mark.anyio
async def test_watchdog_pings_stop_while_unhealthy_and_resume_after(
    tmp_path: Path, data_dir: Path, listener: Listener
) -> None:
    daemon, runtime = make_daemon(tmp_path, data_dir, listener.path)
    for worker in runtime.workers:
        wedge(worker)
    with capture_logs() as logs:
        await notify_for(daemon, runtime, 0.7)
    assert listener.count("WATCHDOG") == 0
    assert listener.count("STATUS") >= 1, "the status line still goes out"
    withheld = [e for e in logs if e["event"] == "watchdog_withheld"]
    assert len(withheld) == 1, "said once per episode, not every tick"
    assert "wedged" in withheld[0]["reason"]

    runtime.workers[1].running.started_at = None
    runtime.workers[1].current = None
    await notify_for(daemon, runtime, 0.5)
    await anyio.sleep(0.1)  # let the listener thread catch up
    assert listener.count("WATCHDOG") >= 2
