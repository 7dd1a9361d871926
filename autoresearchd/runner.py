"""Run one experiment: a fresh copy of the workspace, train.py in its own process group, a report.

This module owns contract 1 of docs/architecture.md from the daemon's side.
:func:`run_experiment` copies the workspace into ``<run_root>/<run_id>``, writes the candidate
as the script, starts ``<python> <script>`` there with the contract environment and streams its
merged output to ``run.log`` with bounded memory (a capped file, a small in-memory tail for
parsing). The child leads its own process group, so stopping it (budget plus grace spent, a stop
request, or the caller's cancellation) reaches every process it spawned: SIGTERM to the group,
SIGKILL after ``kill_grace_s``. Children left behind by a script that exited on its own are
killed too, so no orphan keeps GPU memory. The outcome is read with
:mod:`autoresearchd.summary`; deciding keep/discard and publishing belong to the worker.

Each run also gets a go socket (:mod:`autoresearchd.go_signal`). A run's time starts at go:
at once for a process started here, or, for a standby that :func:`spawn` started earlier
(:mod:`autoresearchd.standby`), when it is handed to :func:`run_experiment`. The report
gives the start-up the device waited for (``startup_s``, spawn or go to the script's ready)
and how long a standby was started before its go (``standby_s``).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import Process

from autoresearchd.config import (
    DEFAULT_KILL_GRACE_S,
    DEFAULT_WORKSPACE_IGNORE,
    ExperimentConfig,
)
from autoresearchd.early_stopping import LearningCurve
from autoresearchd.errors import RunError
from autoresearchd.go_signal import GoLine
from autoresearchd.models import Candidate, Device, Summary
from autoresearchd.procgroup import stop_group
from autoresearchd.sandbox import scrub_env
from autoresearchd.summary import parse_result_json, parse_summary_text

log = structlog.get_logger(__name__)

DEFAULT_MAX_LOG_BYTES = 64 * 1024 * 1024
#: How much of the output's end stays in memory: the summary block is parsed from it.
TAIL_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
#: After the group is gone, how long to wait for the last output; only a process that left
#: the group (setsid) can hold the pipe open longer.
DRAIN_TIMEOUT_S = 2.0
MAX_RESULT_FILE_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 300
#: How long a dropped standby gets to leave on its own before its group is killed.
STANDBY_EXIT_S = 1.0
LOG_NAME = "run.log"
RESULT_NAME = "result.json"

Outcome = Literal["ok", "crash", "timeout", "stopped", "stopped_early"]
_Ending = Literal["exited", "timeout", "stopped", "stopped_early"]
#: Turns ``[python, script]`` into the command actually run (a sandbox prefix, for instance).
Wrap = Callable[[Sequence[str]], list[str]]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything one run needs; paths derive from ``run_root`` and ``run_id``."""

    run_id: str
    candidate: Candidate
    device: Device
    seed: int
    track: str
    time_budget_s: float
    grace_s: float
    data_dir: Path
    workspace: Path
    run_root: Path
    script: str = "train.py"
    python: str = sys.executable
    workspace_ignore: tuple[str, ...] = DEFAULT_WORKSPACE_IGNORE
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    extra_env: Mapping[str, str] = field(default_factory=dict)
    wrap: Wrap | None = None
    #: Reads the run's progress as it trains, and may stop it early (early_stopping.py).
    curve: LearningCurve | None = None

    @classmethod
    def from_config(
        cls,
        experiment: ExperimentConfig,
        *,
        run_root: Path,
        run_id: str,
        candidate: Candidate,
        device: Device,
        seed: int,
    ) -> RunSpec:
        """A spec with the experiment settings of a loaded config."""
        return cls(
            run_id=run_id,
            candidate=candidate,
            device=device,
            seed=seed,
            track=experiment.track,
            time_budget_s=experiment.time_budget_s,
            grace_s=experiment.grace_s,
            data_dir=experiment.data_dir,
            workspace=experiment.workspace,
            run_root=run_root,
            script=experiment.script,
            python=experiment.python or sys.executable,
            workspace_ignore=experiment.workspace_ignore,
            kill_grace_s=experiment.kill_grace_s,
        )

    @property
    def run_dir(self) -> Path:
        return self.run_root.absolute() / self.run_id

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_NAME

    @property
    def result_path(self) -> Path:
        return self.run_dir / RESULT_NAME

    @property
    def limit_s(self) -> float:
        """Seconds from process start after which the run is a timeout."""
        return self.time_budget_s + self.grace_s

    @property
    def command(self) -> list[str]:
        command = [self.python, self.script]
        return self.wrap(command) if self.wrap else command


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
class Started:
    """A run's process, started and not yet watched: its output pipe and its go socket."""

    process: Process
    read_fd: int
    line: GoLine
    spawned_at: float = field(default_factory=time.monotonic)
    #: The niceness the group ran at before a standby was made to yield (None: untouched).
    yielded_from: int | None = None

    def yield_cores(self, niceness: int) -> None:
        """Let the running run have the cores while this standby starts up; only where the
        daemon may give the priority back at go (root), or the run would train niced."""
        if os.geteuid() != 0:
            return
        try:
            before = os.getpriority(os.PRIO_PGRP, self.process.pid)
            os.setpriority(os.PRIO_PGRP, self.process.pid, niceness)
        except OSError:
            return
        object.__setattr__(self, "yielded_from", before)

    def reclaim_cores(self) -> None:
        """Back to the priority it had, for every process and thread in its group."""
        if self.yielded_from is None:
            return
        try:
            os.setpriority(os.PRIO_PGRP, self.process.pid, self.yielded_from)
        except OSError as exc:
            log.warning("standby_priority_not_restored", pid=self.process.pid, error=str(exc))

    async def discard(self, spec: RunSpec) -> None:
        """End a standby that will not run: its group, its pipe and its socket."""
        with anyio.CancelScope(shield=True):
            self.line.close()  # a script waiting for go exits on its own
            with anyio.move_on_after(STANDBY_EXIT_S):
                await self.process.wait()
            await _Group(self.process, spec).end()
            await self.process.aclose()
            os.close(self.read_fd)


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
        sink = _LogSink(spec.log_path, spec.max_log_bytes)
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


def prepare_run_dir(spec: RunSpec) -> Path:
    """Copy the workspace into a fresh run directory and write the candidate as the script."""
    if spec.run_id in ("", ".", "..") or "/" in spec.run_id:
        raise RunError("run id must be a plain directory name", run_id=spec.run_id)
    if not spec.workspace.is_dir():
        raise RunError(f"workspace {spec.workspace} is not a directory", run_id=spec.run_id)
    spec.run_root.mkdir(parents=True, exist_ok=True)
    try:
        # symlinks=True: a workspace may link to large data; copy the link, not the data.
        shutil.copytree(spec.workspace, spec.run_dir, symlinks=True, ignore=_ignore(spec))
    except FileExistsError:
        raise RunError(f"run directory {spec.run_dir} already exists", run_id=spec.run_id) from None
    except shutil.Error as exc:
        source, _, why = exc.args[0][0]
        raise RunError(f"cannot copy {source}: {why}", run_id=spec.run_id) from None
    except OSError as exc:
        raise RunError(f"cannot copy workspace: {exc}", run_id=spec.run_id) from None
    # A result file copied from the workspace would pass for this run's own.
    spec.result_path.unlink(missing_ok=True)
    try:
        (spec.run_dir / spec.script).write_text(spec.candidate.source, encoding="utf-8")
    except OSError as exc:
        raise RunError(f"cannot write {spec.script}: {exc.strerror}", run_id=spec.run_id) from None
    return spec.run_dir


def _ignore(spec: RunSpec) -> Callable[[str, list[str]], set[str]]:
    """The ignore patterns, plus run_root itself when it lies inside the workspace."""
    by_pattern = shutil.ignore_patterns(*spec.workspace_ignore)
    run_root = spec.run_root.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(by_pattern(directory, names))
        if run_root.name in names and Path(directory).resolve() == run_root.parent:
            ignored.add(run_root.name)
        return ignored

    return ignore


def child_env(spec: RunSpec) -> dict[str, str]:
    """The daemon's environment plus contract 1's variables (which ``extra_env`` cannot mask)."""
    gpu = spec.device.is_gpu
    return {
        # Secrets never reach the child (docs/architecture.md, security rules).
        **scrub_env(os.environ),
        **spec.extra_env,
        "CUDA_VISIBLE_DEVICES": spec.device.uuid if gpu else "",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "AUTORESEARCH_DEVICE": "cuda" if gpu else "cpu",
        "AUTORESEARCH_TIME_BUDGET": repr(float(spec.time_budget_s)),
        "AUTORESEARCH_SEED": str(spec.seed),
        "AUTORESEARCH_TRACK": spec.track,
        "AUTORESEARCH_DATA_DIR": str(spec.data_dir.absolute()),
        "AUTORESEARCH_RESULT_FILE": str(spec.result_path),
        "PYTHONUNBUFFERED": "1",
    }


async def _supervise(
    spec: RunSpec,
    sink: _LogSink,
    stop: anyio.Event | None,
    started: Started | None,
    curve: LearningCurve,
) -> _Finished:
    standby = started is not None
    if started is None:
        started = await spawn(spec)
    group = _Group(started.process, spec)
    try:
        return await _watch(group, started, sink, stop, curve, standby=standby)
    finally:
        with anyio.CancelScope(shield=True):
            await group.end()
            await started.process.aclose()
            os.close(started.read_fd)
            started.line.close()


async def spawn(spec: RunSpec) -> Started:
    """Start ``spec``'s process in its prepared run directory; its time starts at go.

    Raises :class:`RunError` when the interpreter (or the sandbox's wrapper) cannot start.
    """
    # Our own pipe rather than asyncio's: asyncio's wait() also waits for its pipes to close,
    # which a grandchild holding stdout would delay until the group is killed.
    read_fd, write_fd = os.pipe()
    line = GoLine()
    try:
        os.set_blocking(read_fd, False)
        process = await _start(spec, write_fd, line)
    except BaseException:
        os.close(read_fd)
        line.close()
        raise
    finally:
        os.close(write_fd)
        line.handed_over()
    return Started(process, read_fd, line)


async def _start(spec: RunSpec, output_fd: int, line: GoLine) -> Process:
    try:
        process = await anyio.open_process(
            spec.command,
            cwd=spec.run_dir,
            env={**child_env(spec), **line.env()},
            stdin=subprocess.DEVNULL,
            stdout=output_fd,
            stderr=output_fd,
            start_new_session=True,
            pass_fds=(line.child_fd,),
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunError(f"cannot start {spec.command[0]}: {reason}", run_id=spec.run_id) from None
    log.info("run_started", run_id=spec.run_id, device=spec.device.uuid, pid=process.pid)
    return process


async def _watch(
    group: _Group,
    process: Started,
    sink: _LogSink,
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
        tasks.start_soon(_pump, process.read_fd, sink, drained, curve)
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


async def _pump(fd: int, sink: _LogSink, drained: anyio.Event, curve: LearningCurve) -> None:
    """Copy the child's output into ``sink`` until every writer has closed the pipe."""
    while True:
        try:
            chunk = os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not chunk:
            drained.set()
            return
        sink.write(chunk)
        curve.feed(chunk)
        # A flood keeps the pipe readable; yield so other workers' tasks still run.
        await anyio.lowlevel.checkpoint()


class _Group:
    """The child's process group, ended once: SIGTERM, then SIGKILL after the grace period."""

    def __init__(self, process: Process, spec: RunSpec) -> None:
        self.process = process
        self.spec = spec
        self._ended = False

    async def end(self) -> None:
        if self._ended:
            return
        # Also reaches children that outlived the leader: they are orphans now.
        if await stop_group(self.process, self.spec.kill_grace_s):
            log.warning(
                "run_killed",
                run_id=self.spec.run_id,
                pid=self.process.pid,
                kill_grace_s=self.spec.kill_grace_s,
            )
        self._ended = True


class _LogSink:
    """``run.log`` on disk and the output's last bytes in memory.

    Past ``max_bytes`` the middle of the output is dropped: the file keeps its head, a line
    saying how much was dropped, and the tail, so a flood can neither fill the disk nor hide
    the summary printed at the end. Writes go straight to the page cache, which costs less than
    a thread hop per chunk. A disk that refuses a write (full, say) ends the file there, with a
    last attempt at the tail on close: the run goes on, and its summary is read from memory.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise RunError(f"cannot create {path}: {exc.strerror or exc}") from None
        self._tail_room = min(TAIL_BYTES, max_bytes // 2)
        self._head_room = max_bytes - self._tail_room
        self._tail = bytearray()
        self.total = 0
        self.written = 0
        self.dropped = 0
        #: Why the disk refused the log, empty while every write landed.
        self.error = ""

    def write(self, chunk: bytes) -> None:
        room = self._head_room - self.written
        if room > 0 and not self.error:
            self._put(chunk[:room])
        self.total += len(chunk)
        self._tail += chunk
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]

    def close(self) -> None:
        if self._fd is None:
            return
        unwritten = self.total - self.written
        if unwritten > 0:
            kept = min(unwritten, self._tail_room)
            self.dropped = unwritten - kept
            if self.dropped:
                self._put(b"\n[autoresearchd: %d bytes of output dropped]\n" % self.dropped)
            self._put(bytes(self._tail[len(self._tail) - kept :]))
        try:
            os.close(self._fd)
        except OSError as exc:  # some file systems report a full disk only here
            self.error = self.error or exc.strerror or str(exc)
        self._fd = None

    def _put(self, data: bytes) -> None:
        """Write all of ``data``, or note why the disk would not take it."""
        view = memoryview(data)
        try:
            while view and self._fd is not None:
                done = os.write(self._fd, view)
                self.written += done
                view = view[done:]
        except OSError as exc:
            self.error = self.error or exc.strerror or str(exc)

    def tail_text(self) -> str:
        return self._tail.decode("utf-8", errors="replace")


def read_summary(result_path: Path, output_tail: str) -> Summary | None:
    """The JSON result file's summary when it has ``val_bpb``, else the output's ``---`` block."""
    from_file = _read_result_file(result_path)
    if from_file is not None and from_file.val_bpb is not None:
        return from_file
    return parse_summary_text(output_tail) or from_file


def _read_result_file(path: Path) -> Summary | None:
    # The child controls its run directory: refuse links and FIFOs (a FIFO would block the read).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # absent, a symlink or unreadable: there is no usable result file
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = file.read(MAX_RESULT_FILE_BYTES + 1)
    if len(data) > MAX_RESULT_FILE_BYTES:
        return None
    return parse_result_json(data.decode("utf-8", errors="replace"))


def _judge(
    spec: RunSpec, finished: _Finished, summary: Summary | None, tail: str
) -> tuple[Outcome, str]:
    if finished.ending == "timeout":
        return "timeout", f"exceeded budget {spec.time_budget_s:g}s + grace {spec.grace_s:g}s"
    if finished.ending in ("stopped", "stopped_early"):
        return finished.ending, "stopped before finishing"
    if finished.returncode != 0:
        return "crash", _exit_error(finished.returncode, tail)
    if summary is None:
        return "crash", "no summary: output has no --- block and no result file"
    if summary.val_bpb is None:
        return "crash", "val_bpb missing from summary"
    if not math.isfinite(summary.val_bpb):
        return "crash", f"val_bpb is {summary.val_bpb}"
    return "ok", ""


def _exit_error(returncode: int | None, tail: str) -> str:
    if returncode is not None and returncode < 0:
        return f"killed by {_signal_name(-returncode)}"
    reason = last_error_line(tail)
    return f"exit code {returncode}: {reason}" if reason else f"exit code {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def last_error_line(output: str) -> str:
    """The exception line of the last traceback in ``output``, else its last non-blank line."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if starts:
        # Frames are indented; the first flush-left line after them names the exception.
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line[0].isspace():
                return line.strip()[:MAX_ERROR_CHARS]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:MAX_ERROR_CHARS]
    return ""


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
