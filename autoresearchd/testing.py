"""Fakes shipped for tests and benchmarks, in place of hardware and of other people's code.

- :class:`FakeNvml` stands in for the ``pynvml`` module: several devices, driver errors,
  devices that vanish, foreign processes and temperatures, all scriptable.
- Scripted stand-in ``train.py`` sources (further below) crash, hang, print NaN or flood
  their output, so the runner and daemon can be tested without torch or a GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
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
        self, gpus: list[FakeGpu] | None = None, *, init_error: str = "", driver: str = "550.54"
    ) -> None:
        self.gpus = list(gpus or [])
        for index, gpu in enumerate(self.gpus):
            gpu.uuid = gpu.uuid or f"GPU-{index:08d}-fake-0000-0000-{index:012d}"
        self.init_error = init_error
        self.driver = driver
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


# -- Plan-driven and timing stand-ins for daemon tests and benchmarks -----------------

PLAN_ENV = "AUTORESEARCH_PLAN_DIR"

_PLAN_SCRIPT = '''"""Stand-in train.py: each run takes the next action from a plan (tests only).

The plan is a JSON list in $AUTORESEARCH_PLAN_DIR/plan.json; run n claims step n by
creating step-<n> exclusively and records its pids there. Actions: "ok", "crash",
"hang" (ignores SIGTERM, with a grandchild), "nan". Past the plan's end: "ok".
"""
import json
import math
import os
import signal
import subprocess
import sys
import time

LR = 0.01  # search: log 0.001..0.1
WIDTH = 64  # search: int 16..256
SLEEP_S = {sleep_s!r}


def claim_step(plan_dir):
    n = 0
    while True:
        try:
            path = os.path.join(plan_dir, f"step-{{n}}")
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return n


def record(plan_dir, n, **fields):
    with open(os.path.join(plan_dir, f"step-{{n}}"), "a") as handle:
        handle.write(json.dumps(fields) + "\\n")


plan_dir = os.environ["{env}"]
with open(os.path.join(plan_dir, "plan.json")) as handle:
    plan = json.load(handle)
step = claim_step(plan_dir)
action = plan[step] if step < len(plan) else "ok"
record(plan_dir, step, action=action, pid=os.getpid(), seed=os.environ.get("AUTORESEARCH_SEED"))
if action == "crash":
    raise RuntimeError("scripted crash")
if action == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    record(plan_dir, step, grandchild=child.pid)
    time.sleep(3600)
for i in range(5):
    print(f"\\rstep {{i}}", end="", flush=True)
    time.sleep(SLEEP_S / 5)
print()
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
noise = ((seed * 2654435761) % 1000 / 1000 - 0.5) * 0.006
val = 3.0 + 0.1 * (math.log10(LR) + 2) ** 2 + 0.05 * ((WIDTH - 128) / 128) ** 2 + noise
print("---")
print(f"val_bpb: {{'nan' if action == 'nan' else round(val, 6)}}")
print(f"training_seconds: {{SLEEP_S}}")
print("num_steps: 5")
'''


def plan_script(sleep_s: float = 0.5) -> str:
    """A stand-in train.py whose runs follow a plan file (see :func:`write_plan`).

    Its val_bpb is ``3.0 + 0.1·(log10 LR + 2)² + 0.05·((WIDTH-128)/128)²`` plus seed
    noise of ±0.003, so the optimum is LR = 0.01, WIDTH = 128.
    """
    return _PLAN_SCRIPT.format(sleep_s=sleep_s, env=PLAN_ENV)


def write_plan(plan_dir: Path, actions: list[str]) -> None:
    plan_dir.mkdir(parents=True, exist_ok=True)
    (plan_dir / "plan.json").write_text(json.dumps(actions))


def plan_steps(plan_dir: Path) -> list[list[dict[str, Any]]]:
    """What each planned run recorded, in step order."""
    steps = sorted(plan_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return [[json.loads(line) for line in p.read_text().splitlines()] for p in steps]


_TIMING_SCRIPT = '''"""Stand-in train.py for timing: logs its own start and end, sleeps, reports."""
import os
import time

START = time.time()
LR = 0.01  # search: log 0.001..0.1
WIDTH = 64  # search: int 16..256
SLEEP_S = {sleep_s!r}
log = os.path.join(os.environ["{env}"], (os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu") + ".log")
time.sleep(SLEEP_S)
END = time.time()
with open(log, "a") as handle:
    handle.write(f"{{START}} {{END}}\\n")
print("---")
print(f"val_bpb: {{3.0 + abs(LR - 0.02) + abs(WIDTH - 100) / 1000:.6f}}")
'''


def timing_script(sleep_s: float) -> str:
    """A stand-in that appends ``start end`` wall-clock times to ``<plan dir>/<device>.log``."""
    return _TIMING_SCRIPT.format(sleep_s=sleep_s, env=PLAN_ENV)
