"""GPU discovery and health through NVML; the only module that imports pynvml.

:class:`Gpus` owns the NVML session. NVML calls block, so every one runs in a worker
thread. When NVML is missing or fails (no driver, no libnvidia-ml), the failure is
logged once as ``nvml_unavailable`` and discovery returns no GPUs; :func:`plan_devices`
then falls back to CPU workers or none, as the config says. Tests pass a fake NVML
(``autoresearchd.testing.FakeNvml``) in place of the module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import structlog

from autoresearchd.config import DevicesConfig
from autoresearchd.errors import GpuError
from autoresearchd.models import Device, GpuProcess

log = structlog.get_logger(__name__)

_MIB = 1024 * 1024


def load_nvml() -> Any | None:
    """Import NVIDIA's bindings lazily; None when they are not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cuda_version(encoded: int) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


@dataclass(frozen=True, slots=True)
class Discovery:
    """What NVML showed: the GPUs, the driver and CUDA versions, and why it failed if it did.

    ``cuda`` is the newest CUDA version the driver supports (``"12.4"``), not a toolkit's.
    """

    gpus: tuple[Device, ...]
    driver: str = ""
    error: str = ""
    cuda: str = ""


class Gpus:
    """An NVML session: open it once, then list devices and refresh them between runs."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml: Any = nvml
        self._ready = False
        self.error = ""

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self._init)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ready:
            await anyio.to_thread.run_sync(self._shutdown)

    def _init(self) -> None:
        nvml = self._nvml if self._nvml is not None else load_nvml()
        if nvml is None:
            self.error = "NVIDIA NVML bindings (nvidia-ml-py) are not installed"
        else:
            self._nvml = nvml
            try:
                nvml.nvmlInit()
                self._ready = True
            except nvml.NVMLError as exc:
                self.error = f"NVML failed to initialise: {exc}"
        if self.error:
            log.warning("nvml_unavailable", reason=self.error)

    def _shutdown(self) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            log.debug("nvml_shutdown_failed", reason=str(exc))
        self._ready = False

    async def discover(self) -> Discovery:
        """Every GPU NVML can see, in index order; devices that fail to answer are skipped."""
        if not self._ready:
            return Discovery(gpus=(), error=self.error)
        return await anyio.to_thread.run_sync(self._discover)

    async def reprobe(self) -> Discovery:
        """Try NVML again if it failed (a driver loading after us, as at boot), then discover."""
        if not self._ready:
            self.error = ""
            await anyio.to_thread.run_sync(self._init)
        return await self.discover()

    def _discover(self) -> Discovery:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = _cuda_version(nvml.nvmlSystemGetCudaDriverVersion())
        except nvml.NVMLError as exc:
            log.warning("nvml_query_failed", reason=str(exc))
            return Discovery(gpus=(), error=f"NVML query failed: {exc}")
        devices = []
        for index in range(count):
            try:
                devices.append(self._read(nvml.nvmlDeviceGetHandleByIndex(index), index))
            except nvml.NVMLError as exc:
                log.warning("gpu_unreadable", index=index, reason=str(exc))
        return Discovery(gpus=tuple(devices), driver=driver, cuda=cuda)

    async def refresh(self, device: Device) -> Device:
        """Re-read one GPU's temperature, memory and processes; GpuError if it is gone."""
        if not device.is_gpu:
            return device
        if not self._ready:
            raise GpuError(self.error or "NVML is not available", device=device.uuid)
        return await anyio.to_thread.run_sync(self._refresh, device)

    def _refresh(self, device: Device) -> Device:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(device.uuid)
            return self._read(handle, device.index)
        except nvml.NVMLError as exc:
            raise GpuError(f"NVML lost the device: {exc}", device=device.uuid) from exc

    def _read(self, handle: Any, index: int) -> Device:
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return Device(
            kind="cuda",
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
            memory_total_mb=memory.total / _MIB,
            memory_free_mb=memory.free / _MIB,
            temperature_c=self._optional(
                nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            ),
            utilization_pct=self._utilization(handle),
            processes=self._processes(handle),
        )

    def _optional(self, call: Any, *args: Any) -> Any:
        # Some boards (and MIG slices) don't report every sensor; a gap is not a failure.
        try:
            return call(*args)
        except self._nvml.NVMLError_NotSupported:
            return None

    def _utilization(self, handle: Any) -> int | None:
        rates = self._optional(self._nvml.nvmlDeviceGetUtilizationRates, handle)
        return None if rates is None else int(rates.gpu)

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        procs = self._optional(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        return tuple(
            GpuProcess(pid=p.pid, used_memory_mb=(p.usedGpuMemory or 0) / _MIB) for p in procs
        )


def select_gpus(gpus: Iterable[Device], config: DevicesConfig) -> list[Device]:
    """The GPUs ``devices.gpus`` asks for, minus ``devices.exclude`` (indices or UUIDs)."""
    if config.gpus == "none":
        return []
    wanted = None if config.gpus == "auto" else set(config.gpus)
    excluded = set(config.exclude)
    return [
        gpu
        for gpu in gpus
        if (wanted is None or _matches(gpu, wanted)) and not _matches(gpu, excluded)
    ]


def _matches(device: Device, refs: set[str]) -> bool:
    return str(device.index) in refs or device.uuid in refs


def plan_devices(gpus: list[Device], config: DevicesConfig) -> list[Device]:
    """The devices to run workers on: the selected GPUs plus CPU slots.

    ``cpu_workers = "auto"`` means one CPU worker when no GPU is available and none
    otherwise; an integer asks for exactly that many CPU workers alongside the GPUs.
    """
    if config.cpu_workers == "auto":
        cpus = 0 if gpus else 1
    else:
        cpus = config.cpu_workers
    return [*gpus, *(Device.cpu(i) for i in range(cpus))]


def device_records(devices: Iterable[Device], discovery: Discovery) -> list[dict[str, Any]]:
    """What ``autoresearchd gpus --json`` prints: each device, a GPU with its driver's versions."""
    versions = {"driver_version": discovery.driver, "cuda_version": discovery.cuda}
    return [{**d.to_json(), **(versions if d.is_gpu else {})} for d in devices]


def foreign_processes(device: Device, own_pids: Iterable[int] = ()) -> list[GpuProcess]:
    """Compute processes on ``device`` that belong neither to us nor to our children."""
    ours = {os.getpid(), *own_pids}
    return [proc for proc in device.processes if proc.pid not in ours]
