"""Standbys: the next run's process, started while the current run still holds the device.

While a run trains, :class:`Standby` starts the process of the candidate prepared to run
next (``Worker.up_next``), in its own run directory with its own run id and seed. The
script imports torch and the harness, loads its data and initialises the device, then
blocks in ``autoresearchd.harness.go.wait_for_go()`` holding no accelerator
time. When that candidate's turn comes, the runner sends go and the run's time starts
there, so the device waits for start-up only when the standby was not ready yet.

It starts up yielding the CPU (:mod:`autoresearchd.yielding`: ``SCHED_IDLE`` where the
daemon may undo it, the autogroup's and the group's nice), given back at go. When to start
it: on a GPU at once (its start-up is tens of seconds, and initialising costs the running
job nothing it needs). On a CPU-only host the cores are the device, and even a yielding
process beside training slows it (train.py's tokens/s fell 3 to 8% beside a standby), so it
starts from the run's evaluation on: once the run's progress says its training is done, or,
for a script that reports none, so that it is ready as the run is expected to end (learned
from this worker's last runs). Only scripts whose code calls ``wait_for_go()`` are started
early: any other script would begin training at once.

A worker holds at most :data:`SLOTS`. On a GPU the second is the speculation's
(:mod:`autoresearchd.worker.speculating`), the candidate that runs next after a keep, so that
a keep need not pay a cold start-up either. It starts once the first standby is ready, and only
while the device keeps :data:`SPARE_HEADROOM` of its memory free beyond what the first one
took (:func:`room_for_spare`): the running job must never be starved of memory by a process
that may never run. Whichever of the two does not run next is dropped.

A standby is dropped cleanly (the socket closed, so a script waiting for go exits; then its
group killed, as a run's, at once for one still starting up) when the candidate it holds
will not run next (the best moved, its claim expired), when the device, the experiment
config or the sandbox changed (both beside the next run, not before it), and when the worker
pauses or drains. Its run directory then stays behind like any other run's, for pruning.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from autoresearchd.config import ExperimentConfig
from autoresearchd.early_stopping import LearningCurve
from autoresearchd.errors import RunError
from autoresearchd.models import Device
from autoresearchd.run_process import Started, prepare_run_dir, spawn
from autoresearchd.run_spec import RunSpec
from autoresearchd.runner import RunReport

log = structlog.get_logger(__name__)

#: A script opts in to standbys by calling this (``autoresearchd.harness.go``).
OPT_IN = "wait_for_go"
#: Standbys a worker may hold at once: the next candidate's and, on a GPU, the speculation's.
SLOTS = 2
#: The share of a GPU's memory that must stay free beside a second standby, beyond what the
#: first one took while it started up.
SPARE_HEADROOM = 0.10
#: How often a second standby looks whether the first is ready.
READY_POLL_S = 0.25
#: On a CPU, start this much earlier than the learned start-up needs, for jitter.
LEAD_FACTOR = 1.2
LEAD_MARGIN_S = 0.25


@functools.lru_cache(maxsize=64)
def opts_in(source: str) -> bool:
    """Whether a script calls ``wait_for_go()``, so that starting it early is safe. A call
    in the code counts; the name in a comment or a docstring does not, since such a script
    would start training beside the run that holds the device."""
    if OPT_IN not in source:
        return False
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False  # it will crash at its turn anyway: no need to start it early
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name == OPT_IN:
                return True
    return False


def room_for_spare(before: Device, now: Device) -> bool:
    """Whether a second standby fits beside the run and the first standby: ``before`` is the
    device as read when the first standby started, ``now`` once it is ready. The memory that
    went meanwhile (the first standby's, and the running job's growth) is counted again for
    the second, and :data:`SPARE_HEADROOM` of the device must stay free after it."""
    if now.memory_total_mb <= 0:
        return False  # nothing known of the memory: do not risk the running job
    footprint = max(0.0, before.memory_free_mb - now.memory_free_mb)
    return now.memory_free_mb - footprint >= SPARE_HEADROOM * now.memory_total_mb


@dataclass(frozen=True, slots=True)
class Key:
    """What a standby was started for; any difference at its turn means it is stale."""

    sha256: str
    device_uuid: str
    experiment: ExperimentConfig
    sandboxed: bool


@dataclass(frozen=True, slots=True)
class Held:
    """A started standby: its spec (run id and seed drawn at spawn) and its process."""

    key: Key
    spec: RunSpec
    seed: int
    started: Started


class Standby:
    """One worker's standby slots, and what its last runs say about their timing."""

    def __init__(self) -> None:
        self._held: list[Held] = []
        self._run_s: float | None = None
        self._startup_s: float | None = None

    @property
    def held(self) -> tuple[Held, ...]:
        """The standbys started, oldest first."""
        return tuple(self._held)

    @property
    def run_ids(self) -> tuple[str, ...]:
        """The standbys' run directory names: live runs for pruning."""
        return tuple(held.spec.run_id for held in self._held)

    def holds(self, sha256: str) -> bool:
        """Whether a standby of the candidate ``sha256`` is started."""
        return any(held.key.sha256 == sha256 for held in self._held)

    async def wait_ready(self) -> bool:
        """Wait until a standby has said ready; False at once when none is held."""
        while self._held:
            if any(held.started.line.poll_ready() for held in self._held):
                return True
            await anyio.sleep(READY_POLL_S)
        return False

    async def wait_until_due(self, device: Device, budget_s: float, run: LearningCurve) -> None:
        """Return when the successor of the run whose curve is ``run`` should start: on a GPU
        at once; on a CPU once the run reports its training done, or, for a script that
        reports no progress, at the time learned from this worker's last runs."""
        if device.is_gpu:
            return
        with anyio.move_on_after(self.delay_s(device, budget_s)):
            await run.wait_trained()
        if run.reporting and not run.trained:
            await run.wait_trained()  # it says when it is done: its evaluation is the slot

    def delay_s(self, device: Device, budget_s: float) -> float:
        """How long after a run's go its successor's standby should start, by the clock."""
        if device.is_gpu:
            return 0.0
        run_s = self._run_s if self._run_s is not None else budget_s
        lead = (self._startup_s or 0.0) * LEAD_FACTOR + LEAD_MARGIN_S
        return max(0.0, run_s - lead)

    def learn(self, report: RunReport) -> None:
        """Note a finished run's length (without its visible start-up) and its start-up."""
        if report.outcome != "ok":
            return  # a crash or a stop says nothing about how long runs last
        startup = report.startup_s
        self._run_s = report.duration_s - (startup or 0.0)
        if startup is None:
            return
        if not report.standby_s:
            self._startup_s = startup  # a fresh process: all of its start-up was seen
        elif startup > 0:
            self._startup_s = report.standby_s + startup  # it was still starting at go
        # Ready before go: its start-up fitted, and the last estimate still holds.

    async def start(self, key: Key, spec: RunSpec, seed: int) -> None:
        """Start ``spec``'s process as a standby, in a free slot; a failure only costs the
        head start."""
        if len(self._held) >= SLOTS or self.holds(key.sha256):
            return
        with anyio.CancelScope(shield=True):  # a process started is a process tracked
            try:
                await anyio.to_thread.run_sync(prepare_run_dir, spec)
                started = await spawn(spec, standby=True)
                started.yield_cores()
            except RunError as exc:
                log.warning("standby_failed", run_id=spec.run_id, error=str(exc))
                return
        self._held.append(Held(key, spec, seed, started))
        log.info("standby_started", run_id=spec.run_id, sha=key.sha256[:12])

    def take(self, key: Key) -> Held | None:
        """The standby for ``key``, now the caller's to run; None when none matches."""
        for held in self._held:
            if held.key == key:
                self._held.remove(held)
                return held
        return None

    def keep_only(self, key: Key | None) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """Let go of every standby but the one for ``key`` (the run that comes next); the
        ending of those let go, for the caller to run beside the next run rather than
        before it. None when there is none to end."""
        gone = [held for held in self._held if held.key != key]
        if not gone:
            return None
        self._held = [held for held in self._held if held.key == key]
        for held in gone:
            same = key is not None and held.key.sha256 == key.sha256
            reason = "stale" if same else "not next"
            log.info("standby_discarded", run_id=held.spec.run_id, reason=reason)
        return functools.partial(_end, gone)

    async def discard(self, reason: str = "dropped") -> None:
        """End every standby now: the worker pauses or drains."""
        gone, self._held = self._held, []
        for held in gone:
            log.info("standby_discarded", run_id=held.spec.run_id, reason=reason)
        await _end(gone)


async def _end(gone: list[Held]) -> None:
    """End the processes of standbys let go, one after the other."""
    for held in gone:
        await held.started.discard(held.spec)
