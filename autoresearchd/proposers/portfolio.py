"""The ``portfolio`` strategy (the default): dependency-free history-aware search.

A portfolio that starts broad and narrows, in plain Python (no Optuna, no numpy), so it
works in the daemon's core install:

- **Broad.** Until the track holds :data:`STARTUP` distinct sources in the parent's code
  skeleton, and afterwards for a share :data:`EXPLORE` of proposals, it samples the
  declared spaces uniformly (log-uniform for ``log``), keeping the best of a few draws by
  distance to everything run or in flight (Mitchell's best-candidate sampling), so
  parallel workers spread out instead of colliding. The distance wraps round each axis
  (a torus) and leaves out the parent, so the draws' marginals stay uniform: on the plain
  cube the farthest point lies in a corner (``benchmarks/broad_corners.py``).
- **Model.** Otherwise, most of the time, a Tree-structured Parzen Estimator: the sources
  are split into the best :func:`good_count` and the rest (crashes and timeouts score as
  the worst value seen, since an out-of-memory corner is information; candidates in flight
  count among the rest, so new proposals steer away from them; runs stopped early, which
  have no val_bpb, are left out), a product-kernel density is fitted to each in unit
  coordinates, and of :data:`CANDIDATES` draws from the good density the one with the
  highest good/rest ratio is proposed.
- **Local.** A share :data:`LOCAL` of proposals perturbs the parent (the current best) as
  the ``perturb`` strategy does: refinement near a good best.

The shares were chosen by measurement: ``benchmarks/search.py`` compares them over its two
landscape families. History is read as ``tpe`` reads it (:class:`history.HistoryReader`):
only results whose code equals the parent's beyond parameter values, on the worker's VRAM
tier, replicates of one source averaged.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
import structlog

from autoresearchd.config import DEFAULT_MAX_HISTORY
from autoresearchd.hyperparams import Param, movable, parse_params
from autoresearchd.literals import Value, same_value
from autoresearchd.models import Candidate, Result, Status
from autoresearchd.proposers.base import (
    DEFAULT_ATTEMPTS,
    EMPTY_CONTEXT,
    IsKnown,
    ProposalContext,
    fresh_candidate,
)
from autoresearchd.proposers.history import HistoryReader
from autoresearchd.proposers.perturb import PerturbProposer

log = structlog.get_logger(__name__)

#: Distinct sources on the track before the model is used; until then every proposal is broad.
STARTUP = 10
#: Share of proposals after the start that stay broad, so a model caught in a wrong basin
#: still finds the right one, and share that perturb the current best. Chosen on
#: ``benchmarks/search.py``'s landscapes (80 runs, 30 searches each) among 0 to 0.3 of
#: each: the pair whose worst ratio to random search over the landscapes was highest.
EXPLORE = 0.05
LOCAL = 0.1
#: Draws from the good density scored per model proposal (Optuna's TPE uses 24).
CANDIDATES = 24
#: Uniform draws behind one broad sample: the one farthest from what is known wins.
SPREAD_DRAWS = 8
#: The most points a density or a distance check reads: the cost stays in milliseconds.
MAX_POINTS = 400
#: Kernel width, in unit coordinates, of a density with one point. Optuna's is 0.2; on the
#: landscapes of ``benchmarks/search.py`` 0.1 found better bests on all five test functions
#: in 60 runs (0.05 and 0.07 were better on Hartmann-6, worse on Levy-8).
BANDWIDTH = 0.1
#: Narrowest kernel, in unit coordinates: a step below it is lost in a 3-digit rounding.
MIN_BANDWIDTH = 0.01
#: Probability a categorical kernel keeps its point's choice.
KEEP_CHOICE = 0.8
_FAILED = (Status.CRASH, Status.TIMEOUT)


def good_count(n: int) -> int:
    """How many of ``n`` sources form the good set: Optuna's ``min(ceil(0.1·n), 25)``,
    at least 2 so the good density has a spread."""
    return max(2, min(math.ceil(0.1 * n), 25))


# --- unit coordinates -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Axis:
    """One movable parameter as a coordinate in [0, 1] (or a choice index)."""

    param: Param

    @property
    def choices(self) -> int:
        """Number of choices for a ``choice`` parameter, 0 for a numeric one."""
        return len(self.param.space.choices) if self.param.space.kind == "choice" else 0

    def _range(self) -> tuple[float, float]:
        space = self.param.space
        low, high = space.low or 0.0, space.high or 0.0
        if space.kind == "log":
            return math.log(low), math.log(high)
        if space.kind in ("int", "pow2"):
            return math.ceil(low) - 0.5, math.floor(high) + 0.5
        return low, high

    def encode(self, value: Value) -> float | None:
        """``value`` as a coordinate, or None when it is outside the space."""
        space = self.param.space
        if not space.contains(value):
            return None
        if space.kind == "choice":
            return float(next(i for i, c in enumerate(space.choices) if same_value(c, value)))
        number = float(value)  # type: ignore[arg-type]  # contains() checked it is a number
        if space.kind == "log":
            number = math.log(number)
        elif space.kind == "pow2":
            number = float(int(number).bit_length() - 1)
        low, high = self._range()
        return 0.5 if high <= low else min(1.0, max(0.0, (number - low) / (high - low)))

    def decode(self, u: float) -> Value:
        space = self.param.space
        if space.kind == "choice":
            return space.choices[int(u)]
        low, high = self._range()
        x = low + min(1.0, max(0.0, u)) * (high - low)
        if space.kind in ("int", "pow2"):
            k = int(min(math.floor(high - 0.5), max(math.ceil(low + 0.5), round(x))))
            return 2**k if space.kind == "pow2" else k
        value = math.exp(x) if space.kind == "log" else x
        rounded = float(f"{value:.3g}")  # readable descriptions, as the other strategies write
        return rounded if space.contains(rounded) else value

    def uniform(self, rng: random.Random) -> float:
        return float(rng.randrange(self.choices)) if self.choices else rng.random()


Point = tuple[float, ...]


def _distance(a: Point, b: Point, axes: Sequence[Axis]) -> float:
    """Squared distance on the torus: a numeric gap wraps round the unit interval.

    On the plain cube the point farthest from what is known lies in a corner, so
    best-candidate sampling in many dimensions pushed every coordinate to an edge (the
    CPU shape parameters all at their top levels: a run too slow to finish). The torus has
    no edge: the farthest draw from uniform points is itself uniform on each axis.
    """
    total = 0.0
    for x, y, axis in zip(a, b, axes, strict=True):
        gap = float(x != y) if axis.choices else min(abs(x - y), 1.0 - abs(x - y))
        total += gap * gap
    return total


# --- the Parzen estimator -------------------------------------------------------------------


class Density:
    """A product-kernel density over unit coordinates, with a uniform prior component.

    Numeric kernels are Gaussians of width :data:`BANDWIDTH`, shrinking slowly with the
    number of points as in Optuna's multivariate TPE; choice kernels keep their point's
    choice with :data:`KEEP_CHOICE`.
    """

    def __init__(self, points: Sequence[Point], axes: Sequence[Axis]) -> None:
        self.points, self.axes = list(points), list(axes)
        n, dims = len(self.points), max(1, len(axes))
        # Optuna's multivariate TPE: a fifth of the axis, shrinking slowly with the points.
        width = max(MIN_BANDWIDTH, BANDWIDTH * max(n, 1) ** (-1.0 / (dims + 4)))
        self.widths = [0.0 if axis.choices else width for axis in axes]

    def sample(self, rng: random.Random) -> Point:
        # The prior weighs as one point: a draw may still land anywhere.
        if not self.points or rng.random() < 1 / (len(self.points) + 1):
            return tuple(axis.uniform(rng) for axis in self.axes)
        centre = rng.choice(self.points)
        drawn = []
        for c, width, axis in zip(centre, self.widths, self.axes, strict=True):
            if axis.choices:
                keep = rng.random() < KEEP_CHOICE or axis.choices == 1
                drawn.append(c if keep else float(rng.randrange(axis.choices)))
            else:
                drawn.append(min(1.0, max(0.0, rng.gauss(c, width))))
        return tuple(drawn)

    def log_density(self, x: Point) -> float:
        total = 1.0  # the uniform prior's density is 1 on the unit cube (per choice: 1/k)
        for axis in self.axes:
            total /= axis.choices or 1
        for p in self.points:
            density = 1.0
            for xj, pj, width, axis in zip(x, p, self.widths, self.axes, strict=True):
                if axis.choices:
                    other = (1 - KEEP_CHOICE) / max(1, axis.choices - 1)
                    density *= KEEP_CHOICE if xj == pj else other
                else:
                    z = (xj - pj) / width
                    density *= math.exp(-0.5 * z * z) / (width * math.sqrt(2 * math.pi))
            total += density
        return math.log(total / (len(self.points) + 1))


# --- the proposer ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """The track's sources as points: measured ones sorted best first, and the others."""

    measured: list[tuple[float, Point]]
    failed: list[Point]
    running: list[Point]

    @property
    def known(self) -> list[Point]:
        return [p for _, p in self.measured] + self.failed + self.running


class PortfolioProposer:
    """Broad samples, a TPE-like model and local steps, mixed by :data:`EXPLORE` and
    :data:`LOCAL` (see the module docstring)."""

    name = "portfolio"
    uses_history = True

    def __init__(
        self,
        rng: random.Random | None = None,
        baseline: str | None = None,
        *,
        max_history: int = DEFAULT_MAX_HISTORY,
        explore: float = EXPLORE,
        local: float = LOCAL,
        startup: int = STARTUP,
        attempts: int = DEFAULT_ATTEMPTS,
    ) -> None:
        self._rng = rng or random.Random()
        self._spaces: dict[str, Param] | None = parse_params(baseline) if baseline else None
        self.max_history = max_history
        self.explore, self.local, self.startup = explore, local, startup
        self.attempts = attempts
        self.reader = HistoryReader()
        self._proposed: set[str] = set()
        self._local = PerturbProposer(rng=self._rng, baseline=baseline)
        self._local.name = self.name

    async def propose(
        self, parent: Candidate, is_known: IsKnown, context: ProposalContext = EMPTY_CONTEXT
    ) -> Candidate | None:
        params = parse_params(parent.source, spaces_from=self._spaces)
        axes = [Axis(p) for p in movable(params, context.device).values()]
        if not axes:
            return None
        history = await anyio.to_thread.run_sync(self.history, parent, axes, context)
        started = len(history.measured) + len(history.failed) >= self.startup
        draw = self._rng.random()
        if started and draw < self.local:
            found = await self._local.propose(parent, is_known, context)
            if found is not None:
                return found
        modelled = started and draw >= self.local + self.explore
        # The parent does not repel broad draws: it is run already and is never proposed
        # again, and spreading from it would push the first draws to its antipode.
        home = _encode(axes, {axis.param.name: axis.param.value for axis in axes})
        known = [p for p in history.known if p != home]
        for _ in range(self.attempts):
            if modelled:
                point = await anyio.to_thread.run_sync(self.modelled, history, axes)
            else:
                point = self.broad(known, axes)
            changes = {}
            for axis, u in zip(axes, point, strict=True):
                value = axis.decode(u)
                if not same_value(value, axis.param.value):
                    changes[axis.param.name] = value
            fresh = await fresh_candidate(
                self.name, parent, params, changes, self._proposed, is_known
            )
            if fresh is not None:
                return fresh
            known = [*known, point]
        log.info("portfolio_fallback", parent=parent.sha256[:12], attempts=self.attempts)
        return await self._local.propose(parent, is_known, context)

    def history(self, parent: Candidate, axes: Sequence[Axis], context: ProposalContext) -> History:
        """The track's results and in-flight candidates as points (runs in a thread)."""
        reading = self.reader.reading(parent.source, parent.sha256)
        skeleton = reading.skeleton if reading else ""
        # Other tiers train under other budgets and memory: their val_bpb is on another scale.
        results = [r for r in context.results if not context.tier or r.vram_tier == context.tier]
        values: dict[Point, list[float]] = {}
        failed: dict[Point, None] = {}
        for result in results[: self.max_history]:
            point = self._point(skeleton, axes, result)
            if point is None:
                continue
            if result.status in _FAILED:
                failed[point] = None
            # A run stopped early has no val_bpb and is left out. Ranked among the rest, it
            # steered proposals away from the incumbent's neighbourhood, where stops are
            # cheap: 1.18 and 1.20x the GPU-hours per real improvement on two of four
            # families of `benchmarks/early_stopping.py --proposer portfolio` (arm `ranked`).
            elif result.val_bpb is not None and math.isfinite(result.val_bpb):
                values.setdefault(point, []).append(result.val_bpb)
        measured = sorted((statistics.fmean(v), p) for p, v in values.items())
        running = []
        for source in context.in_flight:
            found = self.reader.values(skeleton, source)
            point = _encode(axes, found) if found is not None else None
            if point is not None:
                running.append(point)
        return History(measured, [p for p in failed if p not in values], running)

    def _point(self, skeleton: str, axes: Sequence[Axis], result: Result) -> Point | None:
        if result.status not in (Status.KEEP, Status.DISCARD, *_FAILED):
            return None  # invalid: refused by policy, says nothing about the objective
        found = self.reader.values(skeleton, result.train_py, result.train_py_sha256)
        return _encode(axes, found) if found is not None else None

    def broad(self, known: Sequence[Point], axes: Sequence[Axis]) -> Point:
        """The uniform draw farthest, on the torus, from the newest known points."""
        draws = [tuple(axis.uniform(self._rng) for axis in axes) for _ in range(SPREAD_DRAWS)]
        near = known[-MAX_POINTS:]
        if not near:
            return draws[0]
        return max(draws, key=lambda d: min(_distance(d, p, axes) for p in near))

    def modelled(self, history: History, axes: Sequence[Axis]) -> Point:
        """The TPE draw: the best good/rest density ratio among draws from the good density."""
        ranked = [p for _, p in history.measured]
        good_n = good_count(len(ranked) + len(history.failed))
        good = ranked[:good_n]
        # Failures rank last, with the worst value: among the rest.
        rest = ranked[good_n:] + history.failed + history.running
        if len(rest) > MAX_POINTS:
            rest = self._rng.sample(rest, MAX_POINTS)
        good_density, rest_density = Density(good, axes), Density(rest, axes)
        draws = [good_density.sample(self._rng) for _ in range(CANDIDATES)]
        return max(draws, key=lambda x: good_density.log_density(x) - rest_density.log_density(x))


def _encode(axes: Sequence[Axis], values: Mapping[str, Value]) -> Point | None:
    point = []
    for axis in axes:
        value = values.get(axis.param.name)
        u = axis.encode(value) if value is not None else None
        if u is None:
            return None
        point.append(u)
    return tuple(point)
