"""Building result records: a finished run, a refused script or a failed proposal as a Result.

Pure constructors, no I/O and no worker state: what every record carries (the agent, the
track, the device and the software versions) arrives as an :class:`Origin`, so the worker
builds one per record from its current config and device, and tests build them directly.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from autoresearchd.errors import ProposalError
from autoresearchd.models import Candidate, Device, Result, Status
from autoresearchd.runner import RunReport

#: The status a run's outcome records before judging; any other outcome is a crash.
#: A run stopped early as hopeless is a discard without a val_bpb.
OUTCOME_STATUS = {"ok": Status.DISCARD, "timeout": Status.TIMEOUT, "stopped_early": Status.DISCARD}


@dataclass(frozen=True, slots=True)
class Origin:
    """Who ran a script, on which device, with which software: shared by all its records."""

    agent: str
    track: str
    device: Device
    software: Mapping[str, str]


def new_run_id(agent: str) -> str:
    """A fresh id for a run or record, prefixed by the agent so ids never collide across it."""
    return f"{agent}-{uuid.uuid4().hex[:12]}"


def build_result(origin: Origin, candidate: Candidate, report: RunReport, seed: int) -> Result:
    """A finished run as a result: scored ``discard`` if it ran ok, else timeout or crash."""
    summary = report.summary
    status, error = OUTCOME_STATUS.get(report.outcome, Status.CRASH), report.error
    reason = non_finite(report)
    if reason:
        # A script that ran to a clean exit and reported NaN or inf claimed a score no
        # honest run has: refused, like any implausible score, rather than a crash of its own.
        status, error = Status.INVALID, f"implausible: {reason}"
    run = _Run(
        id=report.run_id,
        status=status,
        val_bpb=summary.val_bpb if summary and report.outcome == "ok" else None,
        seed=seed,
        started_at=report.started_at,
        completed_at=report.completed_at,
        duration_s=report.duration_s,
        metrics={**(summary.metrics if summary else {}), **run_timing(report)},
        error=error,
    )
    return _record(origin, candidate, run).with_(
        curve=report.curve, stopped_early=report.stopped_early
    )


def non_finite(report: RunReport) -> str:
    """Why a run that exited cleanly reported a NaN or infinite val_bpb, or "".

    The runner calls such a run a crash; its record keeps no val_bpb (JSON has no NaN
    for the other clients that read it) and says what was claimed.
    """
    summary = report.summary
    if report.outcome != "crash" or report.returncode != 0 or summary is None:
        return ""
    value = summary.val_bpb
    if value is None or math.isfinite(value):
        return ""
    return f"val_bpb {value} is not finite"


def run_timing(report: RunReport) -> dict[str, float]:
    """What the daemon measured of a run's start, beside the script's own seconds: the
    start-up the device waited for and, for a standby, how long it was up before its go."""
    timing = {}
    if report.startup_s is not None:
        timing["startup_seconds"] = round(report.startup_s, 3)
    if report.standby_s:
        timing["standby_seconds"] = round(report.standby_s, 3)
    return timing


def unrun_result(
    origin: Origin, candidate: Candidate, status: Status, error: str, *, now: float | None = None
) -> Result:
    """A result for a script that never ran (refused, or a proposer that failed)."""
    now = time.time() if now is None else now
    run = _Run(
        id=new_run_id(origin.agent),
        status=status,
        val_bpb=None,
        seed=0,
        started_at=now,
        completed_at=now,
        duration_s=0.0,
        metrics={},
        error=error,
    )
    return _record(origin, candidate, run)


@dataclass(frozen=True, slots=True)
class _Run:
    """What one run (or its absence) adds to a record."""

    id: str
    status: Status
    val_bpb: float | None
    seed: int
    started_at: float
    completed_at: float
    duration_s: float
    metrics: dict[str, float]
    error: str


def _record(origin: Origin, candidate: Candidate, run: _Run) -> Result:
    device = origin.device
    return Result(
        id=run.id,
        agent_id=origin.agent,
        track=origin.track,
        status=run.status,
        val_bpb=run.val_bpb,
        description=candidate.description,
        train_py=candidate.source,
        train_py_sha256=candidate.sha256,
        parent_sha256=candidate.parent_sha256,
        seed=run.seed,
        device_name=device.name,
        device_uuid=device.uuid,
        memory_gb=device.memory_gb,
        vram_tier=device.tier,
        started_at=run.started_at,
        completed_at=run.completed_at,
        duration_s=run.duration_s,
        metrics=run.metrics,
        proposer=candidate.proposer,
        error=run.error,
        software=origin.software,
    )


def failed_proposal(origin: Origin, exc: ProposalError, parent: Candidate) -> Result:
    """A proposer's failure as a result: no run, its reason in ``error``."""
    candidate = Candidate(
        source=exc.source,
        parent_sha256=parent.sha256,
        description=f"{exc.proposer} proposal failed",
        proposer=exc.proposer,
    )
    status = Status.INVALID if exc.outcome == "invalid" else Status.CRASH
    return unrun_result(origin, candidate, status, str(exc))


def invalid_result(origin: Origin, candidate: Candidate, reason: str) -> Result:
    """A result for a script refused by policy: it was never run."""
    return unrun_result(origin, candidate, Status.INVALID, reason)
