"""Device health: waits for foreign processes and heat, backs off lost GPUs and flapping."""

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.backoff import backoff_delay
from autoresearchd.config_loader import parse_config
from autoresearchd.gpus import Gpus
from autoresearchd.health import DeviceHealth, FlapDetector
from autoresearchd.models import Device
from autoresearchd.testing import FakeNvml

pytestmark = pytest.mark.anyio


def test_flapping_needs_several_quick_crashes_in_a_row() -> None:
    flaps = FlapDetector(window_s=10, threshold=3)
    assert flaps.record(True, 1.0) == 0
    assert flaps.record(True, 1.0) == 0
    assert flaps.record(True, 1.0) == backoff_delay(1)
    assert flaps.record(True, 1.0) == backoff_delay(2) == 2 * backoff_delay(1)
    assert flaps.record(False, 30.0) == 0 and flaps.streak == 0


def test_slow_crashes_are_not_flapping() -> None:
    flaps = FlapDetector(window_s=10, threshold=2)
    assert [flaps.record(True, 60.0) for _ in range(5)] == [0.0] * 5


async def test_waits_while_a_foreign_process_holds_the_gpu() -> None:
    nvml = FakeNvml.with_gpus(1)
    nvml.gpus[0].pids = [999999]
    async with Gpus(nvml) as gpus:
        (gpu,) = (await gpus.discover()).gpus
        health = DeviceHealth(gpus, anyio.Event(), interval_s=0.01)
        with capture_logs() as logs:
            with anyio.move_on_after(0.1) as scope:
                await health.wait_until_ready(gpu, parse_config({}).devices)
            assert scope.cancelled_caught and health.state == "foreign_process"
            nvml.gpus[0].pids = []
            ready = await health.wait_until_ready(gpu, parse_config({}).devices)
    assert ready.processes == () and health.state == "ready"
    waits = [e for e in logs if e["event"] == "device_waiting"]
    assert len(waits) == 1 and waits[0]["foreign_pids"] == [999999]


async def test_foreign_processes_ignored_when_not_yielding() -> None:
    nvml = FakeNvml.with_gpus(1)
    nvml.gpus[0].pids = [999999]
    config = parse_config({"devices": {"yield_to_foreign_processes": False}}).devices
    async with Gpus(nvml) as gpus:
        (gpu,) = (await gpus.discover()).gpus
        health = DeviceHealth(gpus, anyio.Event(), interval_s=0.01)
        with anyio.fail_after(1):
            await health.wait_until_ready(gpu, config)


async def test_waits_while_too_hot() -> None:
    nvml = FakeNvml.with_gpus(1)
    nvml.gpus[0].temperature_c = 95
    config = parse_config({"devices": {"max_temperature_c": 80}}).devices
    async with Gpus(nvml) as gpus:
        (gpu,) = (await gpus.discover()).gpus
        health = DeviceHealth(gpus, anyio.Event(), interval_s=0.01)
        with anyio.move_on_after(0.05):
            await health.wait_until_ready(gpu, config)
        assert health.state == "too_hot"
        nvml.gpus[0].temperature_c = 70
        with anyio.fail_after(1):
            await health.wait_until_ready(gpu, config)


async def test_lost_gpu_backs_off_and_says_so() -> None:
    nvml = FakeNvml.with_gpus(1)
    async with Gpus(nvml) as gpus:
        (gpu,) = (await gpus.discover()).gpus
        nvml.gpus[0].vanished = True
        interrupt = anyio.Event()
        health = DeviceHealth(gpus, interrupt, interval_s=0.01)
        with capture_logs() as logs:
            with anyio.move_on_after(0.1):
                await health.wait_until_ready(gpu, parse_config({}).devices)
    assert health.state == "backing_off"
    assert logs[0]["event"] == "worker_backoff" and logs[0]["reason"] == "gpu_error"


async def test_cpu_devices_are_always_ready() -> None:
    async with Gpus(FakeNvml(init_error="no driver")) as gpus:
        health = DeviceHealth(gpus, anyio.Event(), interval_s=0.01)
        with anyio.fail_after(1):
            device = await health.wait_until_ready(Device.cpu(0), parse_config({}).devices)
    assert device.uuid == "cpu-0"
