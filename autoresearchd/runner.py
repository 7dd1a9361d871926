"""Run one experiment: a fresh copy of the workspace, train.py in its own process group, a report.

This module owns contract 1 of docs/architecture.md from the daemon's side.
:func:`run_experiment` prepares the run directory and starts the process
(:mod:`autoresearchd.run_process`), streams its merged output to ``run.log`` with bounded
memory (:mod:`autoresearchd.run_output`), and waits for its end: the script exits, the
budget plus grace is spent, a stop is requested, the learning curve's judge stops it, or the
caller is cancelled. Its process group is then ended, so no orphan keeps GPU memory. The
outcome is read with :mod:`autoresearchd.summary` and judged here as ok, crash, timeout or
stopped; deciding keep/discard and publishing belong to the worker.

Each run also gets a go socket (:mod:`autoresearchd.go_signal`). A run's time starts at go:
at once for a process started here, or, for a standby that
:func:`~autoresearchd.run_process.spawn` started earlier
(:mod:`autoresearchd.standby`), when it is handed to :func:`run_experiment`. The report
gives the start-up the device waited for (``startup_s``, spawn or go to the script's ready)
and how long a standby was started before its go (``standby_s``). :func:`prune_runs` keeps
the run root to its newest directories."""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
import structlog
from anyio.abc import Process

from autoresearchd.early_stopping import LearningCurve
from autoresearchd.models import Summary
from autoresearchd.run_output import LogSink, exit_error, pump, read_summary
from autoresearchd.run_process import RunGroup, Started, prepare_run_dir, spawn
from autoresearchd.run_spec import LOG_NAME, RunSpec

log = structlog.get_logger(__name__)

#: After the group is gone, how long to wait for the last output; only a process that left
#: the group (setsid) can hold the pipe open longer.
DRAIN_TIMEOUT_S = 2.0
Outcome = Literal["ok", "crash", "timeout", "stopped", "stopped_early"]
_Ending = Literal["exited", "timeout", "stopped", "stopped_early"]


@dataclass(frozen=True, slots=True)
class RunReport:
    """What happened to one run. ``error`` is one readable line, empty when ``ok``."""

    run_id: str
    run_dir: Path
    outcome: Outcome
    summary: Summary | None
    returncode: int | None
    started_at: float
    completed_at: float
    duration_s: float
    error: str = ""
    curve: tuple[tuple[float, float], ...] = ()
    stopped_early: float | None = None
    #: Seconds from the run's start (spawn, or a standby's go) to the script's ready; None
    #: when the script never waits for go.
    startup_s: float | None = None
    #: Seconds a standby's process was up before its go; 0 for a process started at once.
    standby_s: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME


@dataclass(frozen=True, slots=True)
class _Finished:
    ending: _Ending
    returncode: int | None
    started_at: float
    completed_at: float
    duration_s: float
    startup_s: float | None = None
    standby_s: float = 0.0


async def run_experiment(
    spec: RunSpec, *, stop: anyio.Event | None = None, standby: Started | None = None
) -> RunReport:
    """Run ``spec`` to its end and report; setting ``stop`` ends the run early as ``stopped``.

    ``standby`` is ``spec``'s process when :func:`spawn` started it already: it gets its go
    now. Raises :class:`RunError` when the run cannot start (workspace, run directory,
    interpreter). If the calling task is cancelled, the process group is ended before the
    cancellation propagates.
    """
    if standby is None:
        await anyio.to_thread.run_sync(prepare_run_dir, spec)
    try:
        sink = LogSink(spec.log_path, spec.max_log_bytes)
    except BaseException:
        if standby is not None:
            await standby.discard(spec)
        raise
    curve = spec.curve or LearningCurve(spec.time_budget_s)
    try:
        finished = await _supervise(spec, sink, stop, standby, curve)
    finally:
        sink.close()
    if sink.error:
        log.warning(
            "run_log_incomplete", run_id=spec.run_id, path=str(spec.log_path), error=sink.error
        )
    elif sink.dropped:
        log.warning("run_log_capped", run_id=spec.run_id, dropped_bytes=sink.dropped)
    tail = sink.tail_text()
    summary = await anyio.to_thread.run_sync(read_summary, spec.result_path, tail)
    outcome, error = _judge(spec, finished, summary, tail)
    if finished.ending == "stopped_early" and curve.verdict is not None:
        error = curve.verdict.describe()
    log.info(
        "run_process_exited",
        run_id=spec.run_id,
        returncode=finished.returncode,
        outcome=outcome,
        error=error,
        duration_s=round(finished.duration_s, 3),
    )
    return RunReport(
        run_id=spec.run_id,
        run_dir=spec.run_dir,
        outcome=outcome,
        summary=summary,
        returncode=finished.returncode,
        started_at=finished.started_at,
        completed_at=finished.completed_at,
        duration_s=finished.duration_s,
        error=error,
        curve=curve.points(),
        stopped_early=round(curve.fraction, 4) if outcome == "stopped_early" else None,
        startup_s=finished.startup_s,
        standby_s=finished.standby_s,
    )


async def _supervise(
    spec: RunSpec,
    sink: LogSink,
    stop: anyio.Event | None,
    started: Started | None,
    curve: LearningCurve,
) -> _Finished:
    standby = started is not None
    if started is None:
        started = await spawn(spec)
    group = RunGroup(started.process, spec)
    try:
        return await _watch(group, started, sink, stop, curve, standby=standby)
    finally:
        with anyio.CancelScope(shield=True):
            await group.end()
            await started.process.aclose()
            os.close(started.read_fd)
            started.line.close()


async def _watch(
    group: RunGroup,
    process: Started,
    sink: LogSink,
    stop: anyio.Event | None,
    curve: LearningCurve,
    *,
    standby: bool = False,
) -> _Finished:
    line = process.line
    line.poll_ready()  # a standby ready before its go cost the device no start-up
    process.reclaim_cores()
    started_at, started = time.time(), time.monotonic()
    line.go()
    async with anyio.create_task_group() as tasks:
        drained = anyio.Event()
        tasks.start_soon(pump, process.read_fd, sink, drained, curve)
        tasks.start_soon(line.wait_ready)
        ending = await _wait_end(group.process, stop, group.spec.limit_s, curve)
        completed_at, duration_s = time.time(), time.monotonic() - started
        await group.end()
        with anyio.move_on_after(DRAIN_TIMEOUT_S):
            await drained.wait()
        line.poll_ready()
        tasks.cancel_scope.cancel()
    startup_s = None if line.ready_at is None else max(0.0, line.ready_at - started)
    standby_s = max(0.0, started - process.spawned_at) if standby else 0.0
    return _Finished(
        ending,
        group.process.returncode,
        started_at,
        completed_at,
        duration_s,
        startup_s,
        standby_s,
    )


async def _wait_end(
    process: Process, stop: anyio.Event | None, limit_s: float, curve: LearningCurve
) -> _Ending:
    """Whichever comes first: the process exits, ``stop`` is set, the curve's judge stops
    the run, or ``limit_s`` passes."""
    endings: list[_Ending] = []

    async def until(
        wait: Callable[[], Awaitable[object]], ending: _Ending, scope: anyio.CancelScope
    ) -> None:
        await wait()
        endings.append(ending)
        scope.cancel()

    with anyio.move_on_after(limit_s):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(until, process.wait, "exited", tasks.cancel_scope)
            if stop is not None:
                tasks.start_soon(until, stop.wait, "stopped", tasks.cancel_scope)
            tasks.start_soon(until, curve.wait_stopped, "stopped_early", tasks.cancel_scope)
    return endings[0] if endings else "timeout"


def _judge(
    spec: RunSpec, finished: _Finished, summary: Summary | None, tail: str
) -> tuple[Outcome, str]:
    if finished.ending == "timeout":
        return "timeout", f"exceeded budget {spec.time_budget_s:g}s + grace {spec.grace_s:g}s"
    if finished.ending in ("stopped", "stopped_early"):
        return finished.ending, "stopped before finishing"
    if finished.returncode != 0:
        return "crash", exit_error(finished.returncode, tail)
    if summary is None:
        return "crash", "no summary: output has no --- block and no result file"
    if summary.val_bpb is None:
        return "crash", "val_bpb missing from summary"
    if not math.isfinite(summary.val_bpb):
        return "crash", f"val_bpb is {summary.val_bpb}"
    return "ok", ""


def prune_runs(run_root: Path, keep: int, live: Collection[str] = ()) -> int:
    """Delete the run directories beyond the ``keep`` newest (by mtime); return how many went.

    Directories named in ``live`` (runs in progress) are never removed: a long run's folder
    can be older than many short runs started after it. One that cannot be removed (a script
    left it read-only) is logged and skipped.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    try:
        runs = [path for path in run_root.iterdir() if path.is_dir() and not path.is_symlink()]
    except FileNotFoundError:
        return 0
    runs.sort(key=_mtime, reverse=True)
    removed = 0
    for path in runs[keep:]:
        if path.name in live:
            continue
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            continue  # removed by someone else meanwhile
        except OSError as exc:
            log.warning("run_prune_failed", run_dir=str(path), error=str(exc))
            continue
        removed += 1
    if removed:
        log.info("runs_pruned", run_root=str(run_root), removed=removed, kept=keep)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
