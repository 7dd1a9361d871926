"""Early stopping of hopeless runs: progress lines in, a learning curve and a verdict out.

A run's output is read while it trains (:class:`LearningCurve`, fed by the runner). Two
progress formats count: karpathy/autoresearch's ``step 00123 (41.0%) | loss: 3.21 | ...``,
redrawn with ``\\r`` (the reference ``train.py``'s ``loss 3.21`` too), and one JSON object per
line after :data:`PROGRESS_PREFIX`: ``AUTORESEARCH_PROGRESS {"fraction": 0.41, "loss": 3.21}``.
Losses are averaged per twentieth of the budget (:data:`BINS`); that compact curve is what a
result stores, so any daemon can judge against it.

The rule (:class:`Judge`): when a run completes a bin, its loss there is compared with the
mean loss of the incumbent best's runs in the same bin; the run stops when it is behind by
more than that bin's limit. Limits are calibrated per track and tier on the newest stored
curves (:func:`calibrate`): over every pair of finished runs where one, among the best
:data:`TOP_SHARE` of them, ended better than the other by ``min_improvement``, the largest gap
by which the better one was behind in that bin, times :data:`SAFETY`, and never less than
:data:`NOISE_Z` times the bin's seed noise: no stored improvement would have been stopped
there. A bin resting on fewer than :data:`MIN_TOP` such runs, or whose limit would stop too few
of the stored losers (:data:`MIN_POWER`), is not used; so a track with too few curves, or one
whose curves do not predict the end (a warm-down tied to the budget makes a high-LR run look
worse mid-run and better at the end), is left alone. A share of runs (:data:`AUDIT_SHARE`)
runs on whatever the verdict, so the curves the rule learns from keep including the runs it
would stop.

Only the worker's first run of a new candidate gets a judge: baselines, replicates,
re-measures and confirmation runs always run to the end.
"""

from __future__ import annotations

import bisect
import codecs
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from autoresearchd.config import ExperimentConfig
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.protocol import CollectiveMemory
from autoresearchd.models import Best, Candidate, Result, Status

log = structlog.get_logger(__name__)

#: A run's curve is its mean loss in each of this many equal parts of the budget.
BINS = 20
#: The line prefix of the JSON progress channel on the script's stdout.
PROGRESS_PREFIX = "AUTORESEARCH_PROGRESS"
#: Longer lines are not progress lines: they are skipped unread.
MAX_LINE = 4096
#: Losses beyond this are no training loss anyone reports; such lines are ignored.
MAX_LOSS = 1e6
#: Finished curves, and distinct sources among them, a track needs before any stop.
MIN_CURVES = 50
MIN_SOURCES = 10
#: Runs among the best that a bin's limit must rest on: a new improvement is further behind
#: than all of ``n`` stored ones with a chance of about 1 / (n + 1).
MIN_TOP = 20
#: The share of stored losing pairs a bin's limit must stop for the bin to be used.
MIN_POWER = 0.1
#: Newest finished curves a calibration rests on (it compares every pair of them).
MAX_CURVES = 200
#: Finished curves kept per track and tier, to find the incumbent's runs among.
MAX_KEPT = 2000
#: The share of stored runs, best first, whose pairs calibrate the limits.
TOP_SHARE = 0.4
#: The largest gap seen is a sample's maximum: the limit leaves this much room beyond it.
SAFETY = 1.2
#: The first bin judged: the first twentieth (warm-up, compilation) says least of the end.
FIRST_BIN = 1
#: How many standard deviations of one bin's seed noise a stop needs at the least.
NOISE_Z = 3.0
#: The share of would-be stops that run on, so stored curves include what the rule stops.
AUDIT_SHARE = 0.1
#: Seconds between two reads of the history for one track and tier.
REFRESH_S = 60.0

_SPLIT = re.compile(r"\r\n|\r|\n")
_STEP = re.compile(r"^\s*step\s+(?P<step>\d{1,12})(?:\s*/\s*(?P<total>\d{1,12}))?", re.I)
_PERCENT = re.compile(r"\(\s*(?P<pct>\d{1,3}(?:\.\d{0,6})?)\s*%\s*\)")
_LOSS = re.compile(
    r"\bloss\s*[:=]?\s*(?P<loss>[-+]?(?:\d{1,12}(?:\.\d{0,12})?|\.\d{1,12})(?:[eE][-+]?\d{1,3})?)",
    re.I,
)

Curve = tuple[tuple[float, float], ...]
#: A curve by bin: the mean loss in each, None where the run reported nothing.
Bins = tuple[float | None, ...]


# -- reading progress ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress line: the loss, and the fraction of the budget when the line says it."""

    loss: float
    fraction: float | None = None
    step: int | None = None
    #: From the JSON channel: once a script uses it, its text lines are not read.
    json: bool = False


def parse_progress(line: str) -> Progress | None:
    """The progress a line reports, or None for any other line (or a malformed one)."""
    if len(line) > MAX_LINE:
        return None
    text = line.strip()
    if text.startswith(PROGRESS_PREFIX):
        return _parse_json(text[len(PROGRESS_PREFIX) :])
    match = _STEP.match(text)
    if match is None:
        return None
    loss = _LOSS.search(text, match.end())
    if loss is None:
        return None
    value = _finite(float(loss.group("loss")))
    if value is None:
        return None
    step, total = int(match.group("step")), match.group("total")
    percent = _PERCENT.search(text, match.end())
    fraction: float | None = None
    if percent is not None:
        fraction = float(percent.group("pct")) / 100
    elif total is not None and int(total) > 0:
        fraction = step / int(total)
    return Progress(value, _clamp(fraction), step)


def _parse_json(text: str) -> Progress | None:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    loss, fraction, step = _as_float(data.get("loss")), data.get("fraction"), data.get("step")
    if loss is None or _finite(loss) is None:
        return None
    if fraction is not None:
        fraction = _as_float(fraction)
        if fraction is None or fraction < 0:
            return None
    whole = step if isinstance(step, int) and not isinstance(step, bool) else None
    return Progress(loss, _clamp(fraction), whole, json=True)


def _as_float(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, a string, 1e999)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) and abs(value) <= MAX_LOSS else None


def _clamp(fraction: float | None) -> float | None:
    return None if fraction is None else min(1.0, max(0.0, fraction))


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
        self.fraction = 0.0
        self.loss: float | None = None
        #: Why the run was (or, audited, would have been) stopped; None while it runs on.
        self.verdict: Verdict | None = None

    def feed(self, chunk: bytes) -> None:
        """Read the progress lines in ``chunk``; a line may span chunks."""
        *lines, self._partial = _SPLIT.split(self._partial + self._decoder.decode(chunk))
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
        self._maybe_judge(min(BINS, int(self.fraction * BINS)) - 1)

    def _maybe_judge(self, complete: int) -> None:
        if complete <= self._judged or self.verdict is not None or self._judge is None:
            return
        self._judged = complete
        judge = self._judge()
        loss = self.bin_loss(complete)
        if judge is None or loss is None:
            return
        self.verdict = judge.verdict(complete, loss, self.fraction)
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

    async def wait_stopped(self) -> None:
        """Return once the judge has stopped the run (never, when it does not)."""
        if self._stop is None:
            self._stop = anyio.Event()
        if self.stopped:
            return
        await self._stop.wait()


def bins_of(curve: Iterable[tuple[float, float]]) -> Bins:
    """A stored curve by bin; a curve of another resolution lands in the nearest bins."""
    sums, counts = [0.0] * BINS, [0] * BINS
    for fraction, loss in curve:
        k = min(BINS - 1, max(0, int(fraction * BINS)))
        sums[k] += loss
        counts[k] += 1
    return tuple(s / n if n else None for s, n in zip(sums, counts, strict=True))


# -- the rule ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """A run behind the incumbent by more than the limit of bin ``bin``."""

    bin: int
    fraction: float
    loss: float
    reference: float
    limit: float
    stops: bool = True  # False: an audit, the run goes on

    def to_json(self) -> dict[str, Any]:
        return {
            "fraction": round(self.fraction, 4),
            "loss": round(self.loss, 6),
            "incumbent_loss": round(self.reference, 6),
            "limit": round(self.limit, 6),
        }

    def describe(self) -> str:
        return (
            f"stopped early at {self.fraction:.0%} of the budget: loss {self.loss:.4f}, "
            f"{self.loss - self.reference:.4f} behind the incumbent's (limit {self.limit:.4f})"
        )


@dataclass(frozen=True, slots=True)
class Calibration:
    """Per bin, how far behind the incumbent a run may be (None: the bin is not used)."""

    limits: tuple[float | None, ...]
    noise: tuple[float, ...]
    curves: int = 0
    reason: str = ""

    @property
    def on(self) -> bool:
        return any(limit is not None for limit in self.limits)

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows: on or off, from which fraction, and on how many curves."""
        used = [k for k, limit in enumerate(self.limits) if limit is not None]
        return {
            "on": self.on,
            "from_fraction": (used[0] + 1) / BINS if used else None,
            "bins": len(used),
            "curves": self.curves,
            "reason": "" if self.on else self.reason,
        }


OFF = Calibration(limits=(None,) * BINS, noise=(0.0,) * BINS, reason="not calibrated yet")


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished run as the calibration sees it: its source, curve and final val_bpb."""

    sha256: str
    bins: Bins
    final: float
    completed_at: float = 0.0


def calibrate(samples: Sequence[Sample], *, min_improvement: float) -> Calibration:
    """The limits the stored curves allow (see the module docstring)."""
    newest = sorted(samples, key=lambda s: s.completed_at)[-MAX_CURVES:]
    sources = len({s.sha256 for s in newest})
    if len(newest) < MIN_CURVES or sources < MIN_SOURCES:
        reason = (
            f"{len(newest)} finished curves of {sources} sources, "
            f"needs {MIN_CURVES} of {MIN_SOURCES}"
        )
        return Calibration((None,) * BINS, (0.0,) * BINS, len(newest), reason)
    noise = tuple(_bin_noise(newest, k) for k in range(BINS))
    # The last bin ends the run: stopping there saves nothing.
    limits = tuple(
        _bin_limit(newest, k, noise[k], min_improvement) if FIRST_BIN <= k < BINS - 1 else None
        for k in range(BINS)
    )
    calibration = Calibration(limits, noise, len(newest))
    if not calibration.on:
        reason = "stored curves do not predict the final val_bpb at any fraction of the budget"
        return Calibration(limits, noise, len(newest), reason)
    return calibration


def _bin_noise(samples: Sequence[Sample], k: int) -> float:
    """The pooled standard deviation of bin ``k`` between runs of one source."""
    groups: dict[str, list[float]] = {}
    for s in samples:
        value = s.bins[k]
        if value is not None:
            groups.setdefault(s.sha256, []).append(value)
    squares, dof = 0.0, 0
    for values in groups.values():
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return math.sqrt(squares / dof) if dof else 0.0


def _bin_limit(samples: Sequence[Sample], k: int, noise: float, delta: float) -> float | None:
    """Bin ``k``'s limit, or None when too few pairs inform it or it would stop too few.

    Only pairs whose better run is among the best :data:`TOP_SHARE` of the stored finals
    count: a run that beats the incumbent is such a run, and the dynamics of two poor runs
    (an unstable one, say) say nothing about it.
    """
    points = sorted((s.final, loss) for s in samples if (loss := s.bins[k]) is not None)
    finals = [final for final, _ in points]
    top = max(1, math.ceil(TOP_SHARE * len(points)))
    # suffix_min[i]: the lowest bin loss among runs from i on, in order of final val_bpb.
    suffix_min = [math.inf] * (len(points) + 1)
    for i in range(len(points) - 1, -1, -1):
        suffix_min[i] = min(points[i][1], suffix_min[i + 1])
    worst_gap, pairs = -math.inf, 0
    for final, loss in points[:top]:
        worse = bisect.bisect_right(finals, final + delta)  # the first run it beat by delta
        if worse < len(points):
            pairs += len(points) - worse
            worst_gap = max(worst_gap, loss - suffix_min[worse])
    if top < MIN_TOP or pairs < MIN_TOP:
        return None
    limit = max(SAFETY * worst_gap, NOISE_Z * noise * math.sqrt(2), 0.0)
    return limit if _power(points, finals, top, limit, delta) >= MIN_POWER else None


def _power(
    points: Sequence[tuple[float, float]],
    finals: Sequence[float],
    top: int,
    limit: float,
    delta: float,
) -> float:
    """The share of pairs (a top run, one it beat by ``delta``) where the worse one is
    behind by more than ``limit``: how much the bin would stop."""
    pairs = stopped = 0
    for final, loss in points[:top]:
        worse = points[bisect.bisect_right(finals, final + delta) :]
        pairs += len(worse)
        stopped += sum(1 for _, other in worse if other - loss > limit)
    return stopped / pairs if pairs else 0.0


@dataclass(frozen=True, slots=True)
class Judge:
    """The rule for one run: a calibration, and the incumbent's mean curve (its reference)."""

    calibration: Calibration
    reference: Bins
    runs: int
    audit: bool = False

    def verdict(self, k: int, loss: float, fraction: float) -> Verdict | None:
        """A verdict when ``loss`` in bin ``k`` is behind the reference by more than the limit."""
        limit, reference = self.calibration.limits[k], self.reference[k]
        if limit is None or reference is None:
            return None
        # The reference is a mean of ``runs`` curves; the run is one: both carry noise.
        noise = NOISE_Z * self.calibration.noise[k] * math.sqrt(1 + 1 / max(1, self.runs))
        limit = max(limit, noise)
        if loss - reference <= limit:
            return None
        return Verdict(k, fraction, loss, reference, limit, stops=not self.audit)


def reference_of(curves: Sequence[Bins]) -> Bins:
    """The mean curve of the incumbent's runs, bin by bin."""
    means: list[float | None] = []
    for k in range(BINS):
        values = [c[k] for c in curves if c[k] is not None]
        means.append(statistics.fmean(v for v in values if v is not None) if values else None)
    return tuple(means)


def make_judge(
    calibration: Calibration, incumbent: Sequence[Bins], rng: random.Random
) -> Judge | None:
    """The judge of one run against ``incumbent``'s curves; None when nothing can stop it."""
    if not calibration.on or not incumbent:
        return None
    return Judge(calibration, reference_of(incumbent), len(incumbent), rng.random() < AUDIT_SHARE)


# -- the daemon's view: stored curves per track and tier ------------------------------------


def sample_of(result: Result) -> Sample | None:
    """A finished run with a curve as a calibration sample; None for anything else."""
    final = result.val_bpb
    if result.status not in (Status.KEEP, Status.DISCARD) or result.stopped_early is not None:
        return None
    if final is None or not math.isfinite(final) or not result.curve:
        return None
    return Sample(result.train_py_sha256, bins_of(result.curve), final, result.completed_at)


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
        judge = self.judge_for(experiment.track, tier, best)
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
        track, min_improvement = experiment.track, experiment.min_improvement
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
        for result in history:
            sample = sample_of(result) if result.vram_tier == tier else None
            if sample is not None:
                state.samples[result.id] = sample
        # The incumbent's runs may be older than the curves calibrated on: keep more.
        kept = sorted(state.samples.items(), key=lambda item: item[1].completed_at)
        state.samples = dict(kept[-MAX_KEPT:])
        newest = [sample for _, sample in kept[-MAX_CURVES:]]
        calibration = await anyio.to_thread.run_sync(
            lambda: calibrate(newest, min_improvement=min_improvement)
        )
        if calibration.on != state.calibration.on or state.calibration is OFF:
            log.info("early_stopping_calibrated", track=track, tier=tier, **calibration.describe())
        state.calibration = calibration
        return calibration

    def judge_for(self, track: str, tier: str, best: Best | None) -> Callable[[], Judge | None]:
        """What a run's curve asks at each bin: a judge against ``best``'s stored curves."""
        chosen: dict[Calibration, Judge | None] = {}

        def judge() -> Judge | None:
            state = self._track(track, tier)
            if best is None or not state.calibration.on:
                return None
            if state.calibration not in chosen:  # one audit draw per run and calibration
                curves = [
                    s.bins for s in state.samples.values() if s.sha256 == best.train_py_sha256
                ]
                chosen[state.calibration] = make_judge(state.calibration, curves, self._rng)
            return chosen[state.calibration]

        return judge

    def describe(self, track: str, tier: str) -> dict[str, Any]:
        return self._track(track, tier).calibration.describe()
