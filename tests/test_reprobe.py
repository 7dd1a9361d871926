"""Start-up re-probes NVML while NVIDIA device nodes exist but no GPU is visible yet."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.config import DevicesConfig
from autoresearchd.daemon import discover_gpus
from autoresearchd.gpus import Gpus
from autoresearchd.notify import Notifier
from autoresearchd.testing import FakeGpu, FakeNvml

pytestmark = pytest.mark.anyio


class LateDriver(FakeNvml):
    """NVML whose driver is not loaded for the first ``failures`` initialisations."""

    def __init__(self, failures: int) -> None:
        super().__init__([FakeGpu(), FakeGpu()])
        self.failures = failures
        self.attempts = 0

    def nvmlInit(self) -> None:
        self.attempts += 1
        self.init_error = "Driver Not Loaded" if self.attempts <= self.failures else ""
        super().nvmlInit()


@pytest.fixture
def nodes(tmp_path: Path) -> str:
    """A folder with fake /dev/nvidia0 and /dev/nvidia1; returns the glob that finds them."""
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (tmp_path / name).touch()
    return str(tmp_path / "nvidia[0-9]*")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(2)
    yield sock
    sock.close()


async def test_reprobes_until_the_driver_is_loaded(
    nodes: str, tmp_path: Path, notify: socket.socket
) -> None:
    nvml = LateDriver(failures=2)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    with capture_logs() as logs:
        async with Gpus(nvml) as gpus:
            found = await discover_gpus(
                gpus, DevicesConfig(), node_glob=nodes, min_delay_s=0.01, notifier=notifier
            )
    assert len(found.gpus) == 2 and not found.error
    assert nvml.attempts == 3
    waits = [e for e in logs if e["event"] == "gpus_not_ready"]
    assert [e["attempt"] for e in waits] == [1, 2]
    assert waits[0]["nodes"] == 2, "nvidiactl is not a GPU"
    assert waits[1]["retry_in_s"] == 2 * waits[0]["retry_in_s"], "the wait backs off"
    assert "Driver Not Loaded" in waits[0]["reason"]
    assert [e["attempts"] for e in logs if e["event"] == "gpus_ready"] == [2]
    message = notify.recv(4096).decode()
    assert "EXTEND_TIMEOUT_USEC=" in message and "waiting for NVIDIA GPUs" in message


async def test_without_device_nodes_it_falls_back_at_once(tmp_path: Path) -> None:
    nvml = LateDriver(failures=100)
    with capture_logs() as logs:
        async with Gpus(nvml) as gpus:
            found = await discover_gpus(
                gpus, DevicesConfig(), node_glob=str(tmp_path / "nvidia[0-9]*"), min_delay_s=0.01
            )
    assert found.gpus == () and "Driver Not Loaded" in found.error
    assert nvml.attempts == 1
    assert not [e for e in logs if e["event"] == "gpus_not_ready"]


@pytest.mark.parametrize("gpus", ["none", ("0",)])
async def test_only_auto_selection_waits_for_gpus(nodes: str, gpus: str | tuple[str, ...]) -> None:
    nvml = LateDriver(failures=100)
    async with Gpus(nvml) as found_gpus:
        found = await discover_gpus(
            found_gpus, DevicesConfig(gpus=gpus), node_glob=nodes, min_delay_s=0.01
        )
    assert found.gpus == () and nvml.attempts == 1


async def test_a_working_driver_is_not_probed_twice(nodes: str) -> None:
    nvml = LateDriver(failures=0)
    async with Gpus(nvml) as gpus:
        found = await discover_gpus(gpus, DevicesConfig(), node_glob=nodes, min_delay_s=0.01)
    assert len(found.gpus) == 2 and nvml.attempts == 1
