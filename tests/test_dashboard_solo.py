"""Solo mode: the dashboard over the local SQLite memory, with the devices' live state."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from autoresearchd.config_loader import load_config
from autoresearchd.control import ControlServer, socket_path
from autoresearchd.dashboard.solo import solo_app
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Status
from tests.dashboard_support import BASE, HOSTILE, new_result, source
from tests.hub.support import free_port

pytestmark = pytest.mark.anyio


class Daemon:
    """What the control socket serves: one running device, one paused."""

    async def snapshot(self) -> dict[str, Any]:
        run = {"description": "LR 0.05 → 0.06", "remaining_s": 123.4, "started_at": 0.0}
        return {
            "devices": [
                {"index": 0, "uuid": "GPU-aaaa", "name": "RTX 4090", "state": "running",
                 "experiment": run},
                {"index": 1, "uuid": "GPU-bbbb", "name": "RTX 4090", "state": "paused",
                 "experiment": None},
            ]
        }  # fmt: skip

    def control(self, action: str, device: str | None) -> list[str]:
        return []


def write_config(folder: Path) -> Path:
    workspace = folder / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "train.py").write_text(BASE)
    path = folder / "config.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{folder / "state"}"\n'
        f'[experiment]\nworkspace = "{workspace}"\ntrack = "synthetic"\n'
    )
    return path


async def publish_history(path: Path) -> list[str]:
    """Two kept improvements, a discard and a hostile description; their ids, oldest first."""
    first = new_result("solo", source(0.05), BASE, status=Status.KEEP, val_bpb=1.45, at=1e9)
    results = [
        first,
        new_result("solo", source(0.06), source(0.05), status=Status.KEEP, val_bpb=1.40, at=2e9),
        new_result("solo", source(0.07), source(0.06), val_bpb=1.47, at=3e9, tier="medium"),
        new_result("solo", source(0.08), source(0.06), val_bpb=1.5, at=4e9, description=HOSTILE),
    ]
    async with SqliteMemory(path) as memory:
        for result in results:
            await memory.publish(result)
    return [r.id for r in results]


async def test_solo_pages_show_the_local_history_and_the_devices(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    ids = await publish_history(config.memory.path)
    control = ControlServer(socket_path(config.daemon.state_dir), Daemon())
    async with anyio.create_task_group() as tg, SqliteMemory(config.memory.path) as memory:
        await tg.start(control.serve)
        transport = httpx.ASGITransport(app=solo_app(config, memory))
        async with httpx.AsyncClient(transport=transport, base_url="http://solo") as client:
            summary = (await client.get("/dashboard/api/summary")).json()
            assert [row["id"] for row in summary["recent"]] == ids[::-1]
            assert summary["devices"] == [
                {"device": "GPU-aaaa", "name": "RTX 4090", "state": "running",
                 "experiment": "LR 0.05 → 0.06", "time_left_s": 123.4},
                {"device": "GPU-bbbb", "name": "RTX 4090", "state": "paused",
                 "experiment": "", "time_left_s": None},
            ]  # fmt: skip
            assert summary["standings"][0] == {
                "agent": "solo", "improvements": 2, "keeps": 2, "runs": 4,
                "gpu_hours": round(4 * 300 / 3600, 3), "confirmations": 0,
            }  # fmt: skip
            overview = (await client.get("/dashboard/")).text
            assert "<td>GPU-aaaa</td>" in overview and "123 s" in overview
            assert HOSTILE not in overview and "&lt;script&gt;" in overview
            first = (await client.get(f"/dashboard/result/{ids[0]}")).text
            assert '<span class="del">-LR = 0.04</span>' in first  # against the workspace's
            assert '<span class="add">+LR = 0.05</span>' in first
            tiers = (await client.get("/dashboard/api/results?tier=medium")).json()
            assert [row["id"] for row in tiers["results"]] == [ids[2]]
            steps = (await client.get("/dashboard/api/lineage?track=synthetic")).json()["steps"]
            assert [s["val_bpb"] for s in steps] == [1.40, 1.45]
            points = (await client.get("/dashboard/api/points?track=synthetic")).json()
            assert points["count"] == 4 and points["kept"] == 2
        tg.cancel_scope.cancel()


@pytest.fixture
def dashboard_process(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    config = write_config(tmp_path)
    ids = anyio.run(publish_history, load_config(config).memory.path)
    port = free_port()
    with (tmp_path / "dashboard.log").open("wb") as log:  # a file: a full pipe would stall it
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoresearchd", "dashboard", "--config", str(config),
             "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/", ids
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_dashboard_command_serves_on_loopback(
    dashboard_process: tuple[str, list[str]],
) -> None:
    url, ids = dashboard_process
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = httpx.get(url, follow_redirects=True, timeout=2)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.1)
    assert reply.status_code == 200 and str(reply.url).endswith("/dashboard/")
    assert reply.headers["content-security-policy"].startswith("default-src 'none'")
    data = httpx.get(f"{url}dashboard/api/results", timeout=5).json()
    assert [row["id"] for row in data["results"]] == ids[::-1]
    assert httpx.get(f"{url}dashboard/api/summary", timeout=5).json()["devices"] == []
