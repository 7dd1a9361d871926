"""What ``autoresearchd status``, the control socket and the dashboard show, as typed records.

:class:`DaemonStatus` holds one :class:`DeviceStatus` per worker; ``to_json`` gives the
shape the control socket sends (its keys are the contract the status command and the
dashboard read, so they stay as they are).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoresearchd.models import Candidate


@dataclass(frozen=True, slots=True)
class ExperimentStatus:
    """The run a device has in progress."""

    run_id: str | None
    sha256: str
    description: str
    started_at: float
    elapsed_s: float
    budget_s: float
    remaining_s: float

    @classmethod
    def of(
        cls,
        run_id: str | None,
        candidate: Candidate,
        started_at: float,
        budget_s: float,
        now: float,
    ) -> ExperimentStatus:
        """The run of ``candidate`` that started at ``started_at``, as it stands at ``now``."""
        elapsed = max(0.0, now - started_at)
        return cls(
            run_id=run_id,
            sha256=candidate.sha256,
            description=candidate.description,
            started_at=started_at,
            elapsed_s=round(elapsed, 1),
            budget_s=budget_s,
            remaining_s=round(max(0.0, budget_s - elapsed), 1),
        )


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One device's part of the status."""

    index: int
    uuid: str
    name: str
    kind: str
    tier: str
    temperature_c: int | None
    state: str
    experiment: ExperimentStatus | None
    last_val_bpb: float | None
    last_stopped_early: float | None
    early_stopping: Mapping[str, Any]
    halted: str | None

    def to_json(self) -> dict[str, Any]:
        found = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        found["experiment"] = dataclasses.asdict(self.experiment) if self.experiment else None
        found["early_stopping"] = dict(self.early_stopping)
        return found


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """The daemon's status: who it is, how it stands, its outbox, memory and devices."""

    pid: int
    version: str
    agent: str
    track: str
    state: str
    started_at: float
    best_bpb: float | None
    outbox_depth: int
    #: Results the disk refused, kept only in memory until it takes them again.
    outbox_held: int
    outbox_error: str
    memory: Mapping[str, Any]
    devices: tuple[DeviceStatus, ...]

    def to_json(self) -> dict[str, Any]:
        found = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        found["memory"] = dict(self.memory)
        found["devices"] = [device.to_json() for device in self.devices]
        return found
