"""A fake ``pynvml`` module for tests and benchmarks on machines without a GPU.

:class:`FakeNvml` answers the subset of NVML calls :mod:`autoresearchd.gpus` makes, for
several devices whose fields a test changes while it runs: driver errors, devices that
vanish, foreign processes, temperatures and unsupported readings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

_GIB = 1024**3


class FakeNVMLError(Exception):
    """Plays the role of ``pynvml.NVMLError``."""


class FakeNVMLErrorNotSupported(FakeNVMLError):
    """Plays the role of ``pynvml.NVMLError_NotSupported``."""


class FakeNVMLErrorNotFound(FakeNVMLError):
    """Plays the role of ``pynvml.NVMLError_NotFound`` (a device that vanished)."""


@dataclass
class FakeGpu:
    """One fake device; change its fields while a test runs to script its behaviour."""

    name: str = "NVIDIA H100 80GB HBM3"
    memory_gb: float = 80.0
    used_gb: float = 0.0
    temperature_c: int | None = 40
    utilization_pct: int | None = 0
    pids: list[int] = field(default_factory=list)
    uuid: str = ""
    vanished: bool = False


class FakeNvml:
    """A stand-in for the ``pynvml`` module, with the subset of calls ``gpus`` makes.

    ``init_error`` makes ``nvmlInit`` fail like a machine with no driver. A GPU with
    ``vanished = True`` answers every call with ``NVMLError_NotFound``.
    """

    NVMLError = FakeNVMLError
    NVMLError_NotSupported = FakeNVMLErrorNotSupported
    NVMLError_NotFound = FakeNVMLErrorNotFound
    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: str = "",
        driver: str = "550.54",
        cuda: int = 12040,
    ) -> None:
        self.gpus = list(gpus or [])
        for index, gpu in enumerate(self.gpus):
            gpu.uuid = gpu.uuid or f"GPU-{index:08d}-fake-0000-0000-{index:012d}"
        self.init_error = init_error
        self.driver = driver
        self.cuda = cuda  # NVML's encoding: 12040 is CUDA 12.4
        self.initialised = False

    @classmethod
    def with_gpus(cls, count: int, memory_gb: float = 80.0) -> FakeNvml:
        return cls([FakeGpu(memory_gb=memory_gb) for _ in range(count)])

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self._live(self.gpus[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return self._live(gpu)
        raise FakeNVMLErrorNotFound("Not Found")

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return self._live(gpu).uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return self._live(gpu).name

    def nvmlDeviceGetPciInfo(self, gpu: FakeGpu) -> Any:
        index = self.gpus.index(self._live(gpu))
        return SimpleNamespace(busId=f"00000000:{index + 0x18:02X}:00.0")

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> Any:
        live = self._live(gpu)
        total = int(live.memory_gb * _GIB)
        used = int(live.used_gb * _GIB)
        return SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        return self._supported(self._live(gpu).temperature_c)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:
        return SimpleNamespace(gpu=self._supported(self._live(gpu).utilization_pct), memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=_GIB) for pid in self._live(gpu).pids]

    @staticmethod
    def _live(gpu: FakeGpu) -> FakeGpu:
        if gpu.vanished:
            raise FakeNVMLErrorNotFound("GPU is lost")
        return gpu

    @staticmethod
    def _supported(value: int | None) -> int:
        if value is None:
            raise FakeNVMLErrorNotSupported("Not Supported")
        return value
