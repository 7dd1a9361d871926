"""GPU discovery through a fake NVML: several devices, selection, tiers, errors, vanishing."""

import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.errors import GpuError
from autoresearchd.gpus import (
    Gpus,
    device_records,
    foreign_processes,
    plan_devices,
    select_gpus,
)
from autoresearchd.models import vram_tier
from autoresearchd.testing import FakeGpu, FakeNvml

pytestmark = pytest.mark.anyio


async def test_discovers_every_field() -> None:
    nvml = FakeNvml(
        [
            FakeGpu(
                name="NVIDIA A10",
                memory_gb=24,
                used_gb=4,
                temperature_c=55,
                utilization_pct=30,
                pids=[4242],
            )
        ]
    )
    async with Gpus(nvml) as gpus:
        found = await gpus.discover()
    (gpu,) = found.gpus
    assert (gpu.index, gpu.name, gpu.tier, gpu.temperature_c, gpu.utilization_pct) == (
        0,
        "NVIDIA A10",
        "medium",
        55,
        30,
    )
    assert gpu.uuid.startswith("GPU-") and gpu.pci_bus_id.endswith(":18:00.0")
    assert gpu.memory_total_mb == 24 * 1024 and gpu.memory_free_mb == 20 * 1024
    assert [p.pid for p in gpu.processes] == [4242]
    assert found.driver == "550.54" and not nvml.initialised  # session closed on exit
    assert found.cuda == "12.4"


async def test_records_carry_driver_and_cuda_versions_on_gpus_only() -> None:
    """``gpus --json``: a GPU's record names its driver and CUDA versions; a CPU slot's doesn't."""
    async with Gpus(FakeNvml([FakeGpu(name="NVIDIA H200")], driver="580.159.03", cuda=13000)) as g:
        found = await g.discover()
    devices = plan_devices(list(found.gpus), parse_config({"devices": {"cpu_workers": 1}}).devices)
    gpu, cpu = device_records(devices, found)
    assert (gpu["name"], gpu["tier"], gpu["memory_gb"]) == ("NVIDIA H200", "xl", 80.0)
    assert (gpu["driver_version"], gpu["cuda_version"]) == ("580.159.03", "13.0")
    assert gpu["uuid"].startswith("GPU-")
    assert cpu["kind"] == "cpu" and "driver_version" not in cpu


@pytest.mark.parametrize(
    ("gb", "tier"), [(16, "small"), (16.5, "medium"), (24, "medium"), (48, "large"), (48.1, "xl")]
)
def test_tier_boundaries(gb: float, tier: str) -> None:
    assert vram_tier(gb) == tier


async def test_selection_by_index_and_uuid() -> None:
    nvml = FakeNvml.with_gpus(4)
    async with Gpus(nvml) as gpus:
        found = (await gpus.discover()).gpus
    uuid2 = found[2].uuid
    config = parse_config({"devices": {"gpus": [0, uuid2, 3], "exclude": [3]}})
    assert [g.index for g in select_gpus(found, config.devices)] == [0, 2]
    config = parse_config({"devices": {"exclude": [uuid2]}})
    assert [g.index for g in select_gpus(found, config.devices)] == [0, 1, 3]
    assert select_gpus(found, parse_config({"devices": {"gpus": "none"}}).devices) == []


async def test_driver_error_is_logged_once_and_falls_back_to_cpu() -> None:
    with capture_logs() as logs:
        async with Gpus(FakeNvml(init_error="Driver Not Loaded")) as gpus:
            found = await gpus.discover()
            await gpus.discover()
    assert found.gpus == () and "Driver Not Loaded" in found.error
    assert [e["event"] for e in logs] == ["nvml_unavailable"]
    devices = plan_devices(list(found.gpus), parse_config({}).devices)
    assert [d.uuid for d in devices] == ["cpu-0"]


def test_fallback_none_means_no_workers() -> None:
    config = parse_config({"devices": {"cpu_workers": 0}})
    assert plan_devices([], config.devices) == []


async def test_cpu_workers_alongside_gpus() -> None:
    async with Gpus(FakeNvml.with_gpus(2)) as gpus:
        found = await gpus.discover()
    devices = plan_devices(list(found.gpus), parse_config({"devices": {"cpu_workers": 2}}).devices)
    assert [d.kind for d in devices] == ["cuda", "cuda", "cpu", "cpu"]


async def test_vanished_device_raises_gpu_error_on_refresh() -> None:
    nvml = FakeNvml.with_gpus(2)
    async with Gpus(nvml) as gpus:
        first, second = (await gpus.discover()).gpus
        nvml.gpus[0].vanished = True
        with pytest.raises(GpuError, match="lost") as info:
            await gpus.refresh(first)
        assert info.value.device == first.uuid
        assert (await gpus.refresh(second)).uuid == second.uuid
        with capture_logs() as logs:
            remaining = (await gpus.discover()).gpus
    assert [g.uuid for g in remaining] == [second.uuid]
    assert logs[0]["event"] == "gpu_unreadable"


async def test_refresh_sees_temperature_and_foreign_processes() -> None:
    nvml = FakeNvml.with_gpus(1)
    async with Gpus(nvml) as gpus:
        (gpu,) = (await gpus.discover()).gpus
        nvml.gpus[0].temperature_c = 91
        nvml.gpus[0].pids = [111, 222]
        fresh = await gpus.refresh(gpu)
    assert fresh.temperature_c == 91
    assert [p.pid for p in foreign_processes(fresh, own_pids=[222])] == [111]


async def test_unsupported_sensors_are_none() -> None:
    nvml = FakeNvml([FakeGpu(temperature_c=None, utilization_pct=None)])
    async with Gpus(nvml) as gpus:
        (gpu,) = (await gpus.discover()).gpus
    assert gpu.temperature_c is None and gpu.utilization_pct is None
