"""The control socket: its protocol and permissions, and status/pause/resume/finish end to end."""

from __future__ import annotations

import json
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoresearchd.connectivity import Connectivity, TrackedMemory
from autoresearchd.control import ControlServer, match_devices, request, socket_path
from autoresearchd.errors import ControlError, DaemonNotRunning, TransientMemoryError
from autoresearchd.memory import SqliteMemory
from autoresearchd.models import Device
from autoresearchd.report import status_line, status_text
from autoresearchd.testing import plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track

from .daemon_process import DaemonProcess, cli, wait_for, write_config


class FakeDaemon:
    """A Controllable that records what it was asked."""

    def __init__(self) -> None:
        self.devices = [Device.cpu(0), Device.cpu(1)]
        self.calls: list[tuple[str, str | None]] = []

    async def snapshot(self) -> dict[str, Any]:
        return {"state": "running", "devices": [d.uuid for d in self.devices]}

    def control(self, action: str, device: str | None) -> list[str]:
        self.calls.append((action, device))
        return [self.devices[i].uuid for i in match_devices(self.devices, device)]


async def serving(path: Path, target: FakeDaemon, body: Any) -> Any:
    """Run ``body(path)`` against a ControlServer on ``path``, then stop the server."""
    server = ControlServer(path, target)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        result = await body(path)
        tg.cancel_scope.cancel()
    return result


@pytest.mark.anyio
async def test_status_and_actions_round_trip(tmp_path: Path) -> None:
    target = FakeDaemon()
    path = tmp_path / "control.sock"

    async def body(path: Path) -> tuple[dict[str, Any], ...]:
        info = await anyio.Path(path).stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        return (
            await request(path, "status"),
            await request(path, "pause", "1"),
            await request(path, "finish"),
        )

    status, paused, finished = await serving(path, target, body)
    assert status == {"ok": True, "status": {"state": "running", "devices": ["cpu-0", "cpu-1"]}}
    assert paused["devices"] == ["cpu-1"] and finished["devices"] == ["cpu-0", "cpu-1"]
    assert target.calls == [("pause", "1"), ("finish", None)]
    assert not path.exists(), "the socket is removed when the server stops"


@pytest.mark.anyio
async def test_refusals_come_back_as_one_line_errors(tmp_path: Path) -> None:
    async def body(path: Path) -> None:
        with pytest.raises(ControlError, match="no device '7'"):
            await request(path, "pause", "7")
        with pytest.raises(ControlError, match="unknown command 'reboot'"):
            await request(path, "reboot")
        raw = await raw_exchange(path, b"not json\n")
        assert raw == {"ok": False, "error": "request is not a JSON line"}

    await serving(tmp_path / "control.sock", FakeDaemon(), body)


async def raw_exchange(path: Path, line: bytes) -> Any:
    async with await anyio.connect_unix(path) as stream:
        await stream.send(line)
        return json.loads(await stream.receive())


@pytest.mark.anyio
async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening: what a killed daemon leaves behind
    stale.close()
    with pytest.raises(DaemonNotRunning, match="not running"):
        await request(path, "status")

    async def body(path: Path) -> dict[str, Any]:
        return await request(path, "status")

    assert (await serving(path, FakeDaemon(), body))["ok"]


@pytest.mark.anyio
async def test_no_socket_means_not_running(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning, match=r"nothing listens on .*control\.sock"):
        await request(socket_path(tmp_path), "status")


def test_devices_match_by_index_or_uuid_and_ambiguity_is_refused() -> None:
    gpu = Device(kind="cuda", index=0, uuid="GPU-aaaa", name="H100")
    devices = [gpu, Device.cpu(0), Device.cpu(1)]
    assert match_devices(devices, None) == [0, 1, 2]
    assert match_devices(devices, "GPU-aaaa") == [0]
    assert match_devices(devices, "cpu-0") == [1]
    assert match_devices(devices, "1") == [2]
    with pytest.raises(ControlError, match="ambiguous"):
        match_devices(devices, "0")


def reachable(connectivity: Connectivity) -> bool | None:
    """Read afresh each time: awaited calls change it behind the type checker's back."""
    return connectivity.reachable


@pytest.mark.anyio
async def test_tracked_memory_records_reachability(tmp_path: Path) -> None:
    connectivity = Connectivity("sqlite")
    assert reachable(connectivity) is None
    async with TrackedMemory(SqliteMemory(tmp_path / "m.sqlite"), connectivity) as memory:
        assert await memory.get_best("synthetic") is None
        assert reachable(connectivity) is True

        async def failing() -> None:
            raise TransientMemoryError("hub down", backend="ensue")

        with pytest.raises(TransientMemoryError):
            await memory._track(failing)
    assert connectivity.reachable is False
    assert connectivity.to_json()["last_error"] == "ensue: hub down"


SNAPSHOT: dict[str, Any] = {
    "pid": 42,
    "version": "0.1.0",
    "agent": "alice",
    "track": "synthetic",
    "state": "running",
    "started_at": 1_767_225_600.0,
    "best_bpb": 0.9731,
    "outbox_depth": 2,
    "memory": {"backend": "sqlite", "url": "", "reachable": True},
    "devices": [
        {
            "index": i,
            "uuid": f"GPU-{i}",
            "name": "H100",
            "kind": "cuda",
            "state": state,
            "last_val_bpb": 0.98,
            "experiment": {"description": "LR 0.04 → 0.05", "elapsed_s": 75.0, "remaining_s": 225}
            if state == "running"
            else None,
        }
        for i, state in enumerate(["running", "running", "paused", "too_hot"])
    ],
}


def test_status_line_reads_like_a_sentence() -> None:
    assert status_line(SNAPSHOT) == (
        "4 GPUs · 2 running · 1 paused · 1 too hot · best 0.973100 · 2 results queued"
    )


def test_status_text_has_a_row_per_device_and_colours_only_when_asked() -> None:
    plain = status_text(SNAPSHOT)
    lines = plain.splitlines()
    assert "agent alice" in lines[0] and "memory sqlite: reachable" in lines[1]
    assert lines[3].split() == [
        "#",
        "DEVICE",
        "STATE",
        "ELAPSED",
        "LEFT",
        "LAST_VAL_BPB",
        "EXPERIMENT",
    ]
    assert lines[4].split()[:5] == ["0", "GPU-0", "running", "1m15s", "3m45s"]
    assert "LR 0.04 → 0.05" in lines[4] and "too hot" in lines[7]
    assert "\x1b[" not in plain
    assert "\x1b[32m" in status_text(SNAPSHOT, colour=True)


# -- the real daemon -----------------------------------------------------------------


def device_states(config: Path) -> dict[str, str]:
    done = cli("status", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return {d["uuid"]: d["state"] for d in json.loads(done.stdout)["devices"]}


def runs_started(daemon: DaemonProcess, device: str) -> int:
    return sum(
        1 for e in daemon.events() if e["event"] == "run_started" and e.get("device") == device
    )


@pytest.mark.slow
def test_status_pause_resume_finish_on_the_real_daemon(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    prepare_track("synthetic", data_dir)
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, [])
    config = write_config(tmp_path, plan_script(sleep_s=1.0), data_dir, replicates=0)
    daemon = DaemonProcess(config, plan_dir, tmp_path / "daemon.log")
    try:
        wait_for(lambda: socket_path(tmp_path / "state").exists(), timeout=60, what="the socket")
        wait_for(
            lambda: set(device_states(config).values()) == {"running"},
            timeout=30,
            what="both devices running",
        )
        status = json.loads(cli("status", "--config", str(config), "--json").stdout)
        assert status["agent"] == "tester" and status["memory"]["backend"] == "sqlite"
        running = status["devices"][0]["experiment"]
        assert running["description"] and 0 <= running["remaining_s"] <= running["budget_s"]

        paused = cli("pause", "0", "--config", str(config))
        assert paused.returncode == 0 and paused.stdout.strip() == "paused: cpu-0"
        wait_for(lambda: device_states(config)["cpu-0"] == "paused", timeout=10, what="pause")
        before, other = runs_started(daemon, "cpu-0"), runs_started(daemon, "cpu-1")
        wait_for(lambda: runs_started(daemon, "cpu-1") >= other + 2, timeout=30, what="cpu-1 runs")
        assert runs_started(daemon, "cpu-0") == before, "a paused device takes no work"
        assert device_states(config)["cpu-0"] == "paused"

        assert cli("resume", "--config", str(config)).returncode == 0
        wait_for(
            lambda: runs_started(daemon, "cpu-0") > before, timeout=30, what="cpu-0 to run again"
        )
        wait_for(lambda: device_states(config)["cpu-1"] == "running", timeout=30, what="a run")
        finished = cli("finish", "cpu-1", "--config", str(config))
        assert finished.returncode == 0, finished.stderr
        assert device_states(config)["cpu-1"] in ("finishing", "paused")
        wait_for(lambda: device_states(config)["cpu-1"] == "paused", timeout=30, what="finish")
        stopped = [
            e
            for e in daemon.events()
            if e["event"] == "run_finished" and e.get("device") == "cpu-1"
        ]
        assert stopped[-1]["status"] == "ok", "finish lets the run end on its own"

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
    gone = cli("status", "--config", str(config))
    assert gone.returncode == 1
    assert gone.stderr.strip().splitlines() == [
        f"autoresearchd: the daemon is not running (nothing listens on "
        f"{socket_path(tmp_path / 'state')})"
    ]
    progress = cli("progress", "--config", str(config), "--out", str(tmp_path / "progress.png"))
    assert progress.returncode == 0, progress.stderr
    assert (tmp_path / "progress.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


class UnrepresentableDaemon(FakeDaemon):
    """Answers status with a value JSON cannot carry, as an unscored seeded best once did."""

    async def snapshot(self) -> dict[str, Any]:
        return {"state": "running", "best": float("inf")}


@pytest.mark.anyio
async def test_a_failing_answer_never_stops_the_server(tmp_path: Path) -> None:
    target = UnrepresentableDaemon()
    path = tmp_path / "control.sock"

    async def body(path: Path) -> dict[str, Any]:
        with pytest.raises(ControlError):
            await request(path, "status")
        return await request(path, "pause", "0")  # the server is still there

    assert (await serving(path, target, body))["devices"] == ["cpu-0"]
