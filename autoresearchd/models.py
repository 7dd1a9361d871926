"""Plain data shared by every layer: devices, candidates, summaries, results, bests and notes.

These are frozen dataclasses with no behaviour beyond conversion to and from the
community's JSON record shape (``to_record`` / ``from_record``). Nothing here does I/O,
so every other module may import it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeGuard

#: Upper bounds (GB, inclusive) of the VRAM tiers (docs/architecture.md, contract 3);
#: above the last is "xl".
TIER_BOUNDS_GB: tuple[tuple[str, float], ...] = (("small", 16), ("medium", 24), ("large", 48))
CPU_TIER = "cpu"

#: Summary keys every train.py following the karpathy/autoresearch contract may print.
KNOWN_METRICS: tuple[str, ...] = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
)


class Status(StrEnum):
    """The outcome of one run (docs/architecture.md, contract 3)."""

    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    TIMEOUT = "timeout"
    INVALID = "invalid"


def sha256_text(text: str) -> str:
    """Hex sha256 of a source text, as used for candidates and claims."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def vram_tier(total_gb: float) -> str:
    """Map a device's total VRAM in GB to its tier name."""
    for name, bound in TIER_BOUNDS_GB:
        if total_gb <= bound:
            return name
    return "xl"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process seen on a GPU by NVML."""

    pid: int
    used_memory_mb: float | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One device a worker drives: an NVIDIA GPU or a CPU slot.

    ``uuid`` identifies the device everywhere (``CUDA_VISIBLE_DEVICES``, logs, results);
    CPU slots use ``cpu-<n>``.
    """

    kind: str  # "cuda" or "cpu"
    index: int
    uuid: str
    name: str
    pci_bus_id: str = ""
    memory_total_mb: float = 0.0
    memory_free_mb: float = 0.0
    temperature_c: int | None = None
    utilization_pct: int | None = None
    processes: tuple[GpuProcess, ...] = ()

    @classmethod
    def cpu(cls, index: int) -> Device:
        return cls(kind="cpu", index=index, uuid=f"cpu-{index}", name="cpu")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def memory_gb(self) -> float:
        return round(self.memory_total_mb / 1024, 1)

    @property
    def tier(self) -> str:
        return vram_tier(self.memory_total_mb / 1024) if self.is_gpu else CPU_TIER

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tier"] = self.tier
        data["memory_gb"] = self.memory_gb
        return data


@dataclass(frozen=True, slots=True)
class Candidate:
    """A proposed train.py: its source, hashes and a human description of the change."""

    source: str
    parent_sha256: str | None
    description: str
    proposer: str = "baseline"
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", sha256_text(self.source))


@dataclass(frozen=True, slots=True)
class Summary:
    """What a train.py reported: ``val_bpb`` plus any other numeric metrics."""

    val_bpb: float | None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_valid(self) -> bool:
        return self.val_bpb is not None and math.isfinite(self.val_bpb)


@dataclass(frozen=True, slots=True)
class Result:
    """One run's record, as published to the collective memory (docs/architecture.md, contract 3).

    Field names follow the community's records where one exists (``agent_id``,
    ``val_bpb``, ``memory_gb``, ``vram_tier``, ``status``, ``description``, ``train_py``,
    ``completed_at``, ``delta_vs_best``). ``confirmed_bpb`` is set on a ``keep`` result:
    the mean val_bpb over the candidate's replicated runs, which is what the best records.
    ``provisional`` marks a run that beat the best and awaits replication. ``curve`` is the
    run's learning curve, a bounded list of (fraction of the budget, mean loss) points, and
    ``stopped_early`` the fraction of the budget a run stopped as hopeless had used.
    """

    id: str
    agent_id: str
    track: str
    status: Status
    val_bpb: float | None
    description: str
    train_py: str
    train_py_sha256: str
    parent_sha256: str | None
    seed: int
    device_name: str
    device_uuid: str
    memory_gb: float
    vram_tier: str
    started_at: float
    completed_at: float
    duration_s: float
    delta_vs_best: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    proposer: str = "baseline"
    provisional: bool = False
    confirmed_bpb: float | None = None
    error: str = ""
    software: Mapping[str, str] = field(default_factory=dict)
    curve: tuple[tuple[float, float], ...] = ()
    stopped_early: float | None = None
    #: The id of the claim (another agent's keep) this run re-ran as a confirmation, or
    #: of the keep a restatement re-states; "" for any other run.
    confirms: str = ""

    @property
    def best_bpb(self) -> float | None:
        """The figure a best built from this result records."""
        return self.confirmed_bpb if self.confirmed_bpb is not None else self.val_bpb

    def with_(self, **changes: Any) -> Result:
        return replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready community record."""
        data = asdict(self)
        data["status"] = str(self.status)
        data["metrics"] = dict(self.metrics)
        data["software"] = dict(self.software)
        data["curve"] = [list(point) for point in self.curve]
        return data

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Result:
        """Rebuild a result from :meth:`to_record` output; unknown keys are ignored."""
        names = cls.__dataclass_fields__.keys()
        data = {key: value for key, value in record.items() if key in names}
        data["status"] = Status(data["status"])
        # Curves come from other agents too: keep what is well formed, drop the rest.
        data["curve"] = clean_curve(data.get("curve"))
        stopped = data.get("stopped_early")
        data["stopped_early"] = float(stopped) if _is_fraction(stopped) else None
        return cls(**data)


#: The most points a stored learning curve keeps.
MAX_CURVE_POINTS = 80


def clean_curve(value: Any) -> tuple[tuple[float, float], ...]:
    """The well-formed (fraction, loss) points of a curve read from a record, in order."""
    if not isinstance(value, list | tuple):
        return ()
    points = []
    for point in value[:MAX_CURVE_POINTS]:
        if isinstance(point, list | tuple) and len(point) == 2 and _is_fraction(point[0]):
            loss = point[1]
            if isinstance(loss, float) and math.isfinite(loss):
                points.append((float(point[0]), loss))
            elif isinstance(loss, int) and not isinstance(loss, bool) and abs(loss) < 2**53:
                points.append((float(point[0]), float(loss)))
    return tuple(points)


def _is_fraction(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


@dataclass(frozen=True, slots=True)
class Best:
    """The current best train.py of a track (and, optionally, of one VRAM tier)."""

    track: str
    tier: str | None
    val_bpb: float
    train_py: str
    train_py_sha256: str
    result_id: str
    agent_id: str
    updated_at: float

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Best:
        names = cls.__dataclass_fields__.keys()
        return cls(**{key: value for key, value in record.items() if key in names})


@dataclass(frozen=True, slots=True)
class Note:
    """A hypothesis or insight shared with the swarm (community record shape in ``value``)."""

    key: str
    agent_id: str
    value: dict[str, Any]
    created_at: float


@dataclass(frozen=True, slots=True)
class BestChange:
    """One move of a best: when (by the memory's clock: the hub's for a hub), to what, by whom."""

    at: float
    agent_id: str
    val_bpb: float
    description: str
    train_py_sha256: str
    result_id: str
