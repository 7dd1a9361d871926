"""Early stopping during a run: a run's learning curve, judged bin by bin, and the daemon's
store of curves and calibrations that judges every new run.

While a run trains, the runner feeds its output to a :class:`LearningCurve`
(:mod:`autoresearchd.progress` reads the lines). Losses are averaged per bin
(:data:`~autoresearchd.curves.BINS`); that compact curve is what a result stores. When the
run completes a bin, its :class:`Judge` compares the loss there with the limit the track's
calibration (:mod:`autoresearchd.calibration`) sets for a run that is to end at the
incumbent's val_bpb; above it, the run stops. A share of would-be stops
(:data:`AUDIT_SHARE`) runs on whatever the verdict, so the curves the rule learns from keep
including the runs it would stop.

Only the worker's first run of a new candidate gets a judge: baselines, replicates,
re-measures and confirmation runs always run to the end.
"""

from __future__ import annotations

import codecs
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from autoresearchd.calibration import MAX_CURVES, OFF, TARGET_LOSS, Calibration, calibrate
from autoresearchd.config import ExperimentConfig
from autoresearchd.curves import BINS, Bins, Coordinates, Curve, Sample, coordinates, sample_of
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.protocol import CollectiveMemory
from autoresearchd.models import Best, Candidate, Result
from autoresearchd.progress import LINE_SPLIT, MAX_LINE, PROGRESS_PREFIX, Progress, parse_progress

log = structlog.get_logger(__name__)

#: The share of would-be stops that run on, so stored curves include what the rule stops.
AUDIT_SHARE = 0.1
#: Seconds between two reads of the history for one track and tier.
REFRESH_S = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """A run whose curve up to bin ``bin`` predicts a final val_bpb (``predicted``) whose
    lower bound (``lowest``) is above what it must beat (``threshold``: the incumbent's,
    allowing for seed noise)."""

    bin: int
    fraction: float
    loss: float
    incumbent: float
    predicted: float
    lowest: float
    threshold: float
    stops: bool = True  # False: an audit, the run goes on

    def to_json(self) -> dict[str, Any]:
        return {
            "fraction": round(self.fraction, 4),
            "loss": round(self.loss, 6),
            "predicted_val_bpb": round(self.predicted, 6),
            "lowest_val_bpb": round(self.lowest, 6),
            "incumbent_val_bpb": round(self.incumbent, 6),
        }

    def describe(self) -> str:
        return (
            f"stopped early at {self.fraction:.0%} of the budget: loss {self.loss:.4f} "
            f"predicts val_bpb {self.predicted:.4f}, at least {self.lowest:.4f} "
            f"({1 - TARGET_LOSS:.0%} bound), behind the incumbent's {self.incumbent:.4f}"
        )


@dataclass(frozen=True, slots=True)
class Judge:
    """The rule for one run: a calibration, the incumbent's val_bpb to beat and the run's
    hyperparameters."""

    calibration: Calibration
    incumbent: float
    runs: int = 1
    audit: bool = False
    params: Coordinates = ()

    def verdict(self, bins: Bins, k: int, fraction: float) -> Verdict | None:
        """A verdict when the curve up to bin ``k`` is sure to end above the incumbent."""
        bound = self.calibration.bound(bins, k, self.params)
        threshold = self.calibration.threshold(self.incumbent, self.runs)
        if bound is None or bound[1] <= threshold:
            return None
        predicted, lowest = bound
        return Verdict(
            k,
            fraction,
            bins[k] or 0.0,
            self.incumbent,
            predicted,
            lowest,
            threshold,
            not self.audit,
        )


def make_judge(
    calibration: Calibration,
    incumbent: float,
    runs: int,
    rng: random.Random,
    params: Coordinates = (),
) -> Judge | None:
    """The judge of one run (of hyperparameters ``params``) against the incumbent's
    val_bpb, the mean of ``runs`` runs; None when nothing can stop it."""
    if not calibration.on or not math.isfinite(incumbent):
        return None
    return Judge(calibration, incumbent, runs, rng.random() < AUDIT_SHARE, params)


class LearningCurve:
    """A run's learning curve, fed its output as it comes; asks ``judge`` at each bin's end.

    ``judge`` is asked afresh at each bin, so a calibration that lands while the run trains
    applies to it. A line without a fraction is placed by the time since the curve started.
    """

    def __init__(
        self,
        budget_s: float,
        judge: Callable[[], Judge | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s = budget_s
        self._judge = judge
        self._clock = clock
        self._started = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._skipping = False
        self._sums = [0.0] * BINS
        self._fractions = [0.0] * BINS
        self._counts = [0] * BINS
        self._judged = -1
        self._json = False
        self._stop: anyio.Event | None = None
        self._trained: anyio.Event | None = None
        self.fraction = 0.0
        self.loss: float | None = None
        #: Why the run was (or, audited, would have been) stopped; None while it runs on.
        self.verdict: Verdict | None = None

    def feed(self, chunk: bytes) -> None:
        """Read the progress lines in ``chunk``; a line may span chunks."""
        *lines, self._partial = LINE_SPLIT.split(self._partial + self._decoder.decode(chunk))
        if len(self._partial) > MAX_LINE:
            self._partial, self._skipping = "", True
        for line in lines:
            if self._skipping:  # the end of a line too long to be progress
                self._skipping = False
            elif "loss" in line or PROGRESS_PREFIX in line:
                progress = parse_progress(line)
                if progress is not None:
                    self.add(progress)

    def add(self, progress: Progress) -> None:
        self._json = self._json or progress.json
        if self._json and not progress.json:
            return
        fraction = progress.fraction
        if fraction is None:
            fraction = min(1.0, (self._clock() - self._started) / self.budget_s)
        k = min(BINS - 1, int(fraction * BINS))
        self._sums[k] += progress.loss
        self._fractions[k] += fraction
        self._counts[k] += 1
        self.loss = progress.loss
        # Bins are judged once complete, by the furthest point reached: a script that
        # reports out of order cannot make the rule look at a bin twice.
        self.fraction = max(self.fraction, fraction)
        if self.trained and self._trained is not None:
            self._trained.set()
        self._maybe_judge(min(BINS, int(self.fraction * BINS)) - 1)

    def _maybe_judge(self, complete: int) -> None:
        if complete <= self._judged or self.verdict is not None or self._judge is None:
            return
        self._judged = complete
        judge = self._judge()
        if judge is None or self.bin_loss(complete) is None:
            return
        bins = tuple(self.bin_loss(k) for k in range(BINS))
        self.verdict = judge.verdict(bins, complete, self.fraction)
        if self.verdict is None:
            return
        log.info(
            "run_stopped_early" if self.verdict.stops else "early_stop_audited",
            **self.verdict.to_json(),
        )
        if self.verdict.stops and self._stop is not None:
            self._stop.set()

    def bin_loss(self, k: int) -> float | None:
        return self._sums[k] / self._counts[k] if self._counts[k] else None

    @property
    def stopped(self) -> bool:
        return self.verdict is not None and self.verdict.stops

    def points(self) -> Curve:
        """The compact curve a result stores: (mean fraction, mean loss) of each bin reached."""
        return tuple(
            (round(self._fractions[k] / n, 4), round(self._sums[k] / n, 6))
            for k, n in enumerate(self._counts)
            if n
        )

    @property
    def reporting(self) -> bool:
        """Whether the script has reported any progress (so its training's end will show)."""
        return self.loss is not None

    @property
    def trained(self) -> bool:
        """Whether the run has reported its whole budget trained: evaluation comes next."""
        return self.fraction >= 1.0

    async def wait_trained(self) -> None:
        """Return once the run reports its training done (never, for one that reports none)."""
        if self._trained is None:
            self._trained = anyio.Event()
        if self.trained:
            return
        await self._trained.wait()

    async def wait_stopped(self) -> None:
        """Return once the judge has stopped the run (never, when it does not)."""
        if self._stop is None:
            self._stop = anyio.Event()
        if self.stopped:
            return
        await self._stop.wait()


@dataclass
class _Track:
    samples: dict[str, Sample] = field(default_factory=dict)  # by result id
    calibration: Calibration = OFF
    refreshed_at: float = -math.inf


class EarlyStopping:
    """Stored curves per track and tier, their calibration, and a judge for each new run.

    One per daemon, shared by its workers. :meth:`refresh` reads the history (at most every
    :data:`REFRESH_S`) and recalibrates in a thread; a run's judge is looked up at each bin,
    so a run never waits for the history to start.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._rng = rng or random.Random()

    def _track(self, track: str, tier: str) -> _Track:
        return self._tracks.setdefault((track, tier), _Track())

    def remember(self, result: Result) -> None:
        """A result this daemon queued: it counts before the memory has it."""
        sample = sample_of(result)
        if sample is not None:
            self._track(result.track, result.vram_tier).samples[result.id] = sample

    def curve_for(
        self, experiment: ExperimentConfig, tier: str, candidate: Candidate, best: Best | None
    ) -> LearningCurve | None:
        """The curve of a candidate's first run, judged against ``best``; None when the run
        must not be stopped (a baseline, or early stopping off)."""
        if experiment.early_stopping == "off" or candidate.parent_sha256 is None:
            return None
        judge = self.judge_for(experiment.track, tier, best, coordinates(candidate.source))
        return LearningCurve(experiment.time_budget_s, judge)

    async def refresh(
        self,
        memory: CollectiveMemory,
        experiment: ExperimentConfig,
        tier: str,
        *,
        limit: int,
        force: bool = False,
    ) -> Calibration:
        """Read the track's history and recalibrate, unless that was done recently."""
        track = experiment.track
        state = self._track(track, tier)
        now = time.monotonic()
        if not force and now - state.refreshed_at < REFRESH_S:
            return state.calibration
        state.refreshed_at = now  # other workers of this daemon need not read it too
        try:
            history = await memory.results(track, limit=limit)
        except MemoryBackendError as exc:
            log.warning("early_stopping_history_unavailable", error=str(exc))
            history = []
        fresh = [r for r in history if r.vram_tier == tier and r.id not in state.samples]
        # Reading a result's hyperparameters parses its train.py: off the event loop, once.
        state.samples.update(await anyio.to_thread.run_sync(lambda: _samples(fresh)))
        kept = sorted(state.samples.items(), key=lambda item: item[1].completed_at)
        state.samples = dict(kept[-MAX_CURVES:])
        newest = list(state.samples.values())
        calibration = await anyio.to_thread.run_sync(lambda: calibrate(newest))
        if calibration.on != state.calibration.on or state.calibration is OFF:
            log.info("early_stopping_calibrated", track=track, tier=tier, **calibration.describe())
        state.calibration = calibration
        return calibration

    def judge_for(
        self, track: str, tier: str, best: Best | None, params: Coordinates = ()
    ) -> Callable[[], Judge | None]:
        """What a run's curve (of hyperparameters ``params``) asks at each bin: a judge
        against ``best``'s val_bpb."""
        chosen: dict[Calibration, Judge | None] = {}

        def judge() -> Judge | None:
            state = self._track(track, tier)
            if best is None or not state.calibration.on:
                return None
            if state.calibration not in chosen:  # one audit draw per run and calibration
                runs = sum(1 for s in state.samples.values() if s.sha256 == best.train_py_sha256)
                made = make_judge(state.calibration, best.val_bpb, runs, self._rng, params)
                chosen[state.calibration] = made
            return chosen[state.calibration]

        return judge

    def describe(self, track: str, tier: str) -> dict[str, Any]:
        return self._track(track, tier).calibration.describe()


def _samples(results: list[Result]) -> dict[str, Sample]:
    """The calibration samples among ``results``, by result id."""
    return {r.id: sample for r in results if (sample := sample_of(r)) is not None}
