"""Calibration of early stopping on stored curves: per bin, a prediction of the final val_bpb
and how far a run like an improvement may beat it.

A stop answers a test: could this run still end below the incumbent's val_bpb? Per bin ``k``
(a twentieth of the budget), over the newest :data:`MAX_CURVES` finished runs whose final is
among the best :data:`TOP_SHARE` (the runs an improvement resembles), :func:`calibrate` fits
by least squares the final from the loss at ``k``, at ``k - 1``, at ``k // 2`` and, with
``history`` among :data:`SHAPES`, at ``k // 4`` and ``3k // 4`` (:func:`features`: the two
last bins average away some of the report noise, and with the earlier ones they show how
fast the run still falls and how it got there), with each run's leave-one-out error
(predicted by a fit without it) and the errors' spread ``s_k``.

A curve's shape depends on its hyperparameters (a high learning rate with a warm-down tied to
the budget looks worse mid-run and ends better), so the fit may also read the run's numeric
hyperparameters (``Sample.params``, those every top run carries), standardised, with a ridge
penalty (:mod:`autoresearchd.ridge`) chosen among :data:`PENALTY_SHARES` by leave-one-out
error. It does so only where that error is lower than the curve's alone; elsewhere, or when
a top run carries none (a result stored without its source), the bin reads the curve alone.
The fit may also read, in the same penalised block, each hyperparameter's square and its
product with the loss at the bin (``shapes``; the daemon uses :data:`SHAPES`, which reads
neither: a benchmark weighs them against the linear terms).

A run stops at bin ``k`` when its predicted final minus ``z s_k`` is above the incumbent's
val_bpb plus :data:`SEED_Z` seed deviations of the difference of two finals (the seed noise
is pooled over repeated runs of one source), so a stop holds against the incumbent's true
value, not one lucky measurement. ``z`` is chosen for a target loss rate
(:data:`TARGET_LOSS`) over every bin a run is judged at together: it is the split-conformal
quantile of each stored top run's largest standardised error over the bins used, so of the
stored runs like an improvement at most that share would have been stopped at any bin,
whatever the schedule did to their shape on the way.

A bin is used only where stored curves predict the end and a stop there earns its keep: a
curve shifted up everywhere must predict a worse final and, at the calibrated ``z``,
stopping there must save at least :data:`MIN_POWER` of the budget of the stored runs outside
the top share (a bin that stops little, or too late to matter, only widens ``z`` for the
rest).
A warm-down tied to the budget, which makes high-LR runs look worse mid-run and better at the
end, shows as wide errors at those fractions: they stop little and drop out, or the whole
track is off.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from autoresearchd import ridge
from autoresearchd.curves import BINS, Coordinates, Sample

#: The largest share of stored runs like an improvement the rule may stop.
TARGET_LOSS = 0.02
#: The share of stored runs, best final first, that calibrate the limits.
TOP_SHARE = 0.5
#: Top runs a calibration needs: fewer, and the conformal quantile at TARGET_LOSS is unbounded.
MIN_TOP = math.ceil(1 / TARGET_LOSS) - 1
#: Finished curves, and distinct sources among them, a track needs before any stop.
MIN_CURVES = 100
MIN_SOURCES = 10
#: Newest finished curves a calibration rests on.
MAX_CURVES = 300
#: The share of the budget of stored runs outside the top a bin's stops must save to be used.
MIN_POWER = 0.1
#: The share of the best stored finals below which the power check places the incumbent.
INCUMBENT_SHARE = 0.1
#: Standard deviations of seed noise by which a run's final may beat its configuration's own:
#: a stop must hold against the incumbent's true val_bpb, not one lucky measurement of it.
SEED_Z = 2.0
#: Degrees of freedom of seed noise (runs of one source beyond the first) a calibration needs.
MIN_SEED_DOF = 5
#: The first bin judged: the first twentieth (warm-up, compilation) says least of the end.
FIRST_BIN = 1
#: The ridge penalties a bin's fit tries on the standardised hyperparameters, as shares of
#: the runs it is fitted on (each standardised column's squares sum to that number).
PENALTY_SHARES = (0.01, 0.1, 1.0, 10.0)
#: The nonlinear terms a fit may read beside each hyperparameter's own: its square
#: (``square``), and its product with the loss at the bin (``product``); and ``history``:
#: the curve's features also read the loss a quarter and three quarters of the way there.
Shape = Literal["square", "product", "history"]
SHAPES: tuple[Shape, ...] = ("history",)


def features(
    bins: Sequence[float | None], k: int, history: bool = False
) -> tuple[float, ...] | None:
    """What bin ``k``'s fit reads of a curve: the loss there and at the bin before (their
    mix smooths the report noise and shows how fast the run still falls) and at bin
    ``k // 2`` (how far it came), with ``history`` also at ``k // 4`` and ``3k // 4``; None
    when a bin among them is missing."""
    picked = [bins[j] for j in _read(k, history)]
    if None in picked:
        return None
    return (1.0, *(v for v in picked if v is not None))


@functools.cache
def _read(k: int, history: bool) -> tuple[int, ...]:
    """The bins :func:`features` reads at bin ``k``, latest first (each bin's list is made
    once: a calibration reads it for every stored run)."""
    at = {k, max(0, k - 1), k // 2} | ({k // 4, 3 * k // 4} if history else set())
    return tuple(sorted(at, reverse=True))


@dataclass(frozen=True, slots=True)
class Term:
    """One hyperparameter's part of a prediction: its coefficient on the value standardised
    over the fit's runs (``u``), or on ``u`` squared (``power`` 2: a rate too high or too low
    both end worse), or on ``u`` times the loss at the bin standardised likewise (``loss``,
    its centre and scale: how much the loss says of the end depends on the rate). Beyond the
    range they spanned a term is not trusted to count against a run: there it counts as at
    the range's edge, or as extrapolated where that predicts a lower final (a run that goes
    further the way the best went may bloom later still)."""

    name: str
    centre: float
    scale: float
    low: float
    high: float
    coefficient: float
    power: int = 1
    loss: tuple[float, float] | None = None

    def column(self, raw: float, loss: float) -> float:
        """The input this term's coefficient multiplies, for a value ``raw`` and a loss at
        the bin ``loss``."""
        u = ((raw - self.centre) / self.scale) ** self.power
        if self.loss is None:
            return u
        return u * (loss - self.loss[0]) / self.loss[1]

    def value(self, params: Mapping[str, float], loss: float = 0.0) -> float | None:
        raw = params.get(self.name)
        if raw is None:
            return None
        if self.low <= raw <= self.high:  # inside the range the edge is the value itself
            return self.coefficient * self.column(raw, loss)
        edge = self.column(min(self.high, max(self.low, raw)), loss)
        return min(self.coefficient * edge, self.coefficient * self.column(raw, loss))


@dataclass(frozen=True, slots=True)
class Line:
    """One bin's fit: the final predicted from :func:`features` of a curve (and, where they
    predict it better, the run's hyperparameters), and the spread of the prediction's
    leave-one-out errors."""

    coefficients: tuple[float, ...]
    spread: float
    terms: tuple[Term, ...] = ()
    history: bool = False  # the features read more of the curve (see :func:`features`)

    def predict(
        self, bins: Sequence[float | None], k: int, params: Coordinates = ()
    ) -> float | None:
        """The predicted final; None when a bin it reads, or a hyperparameter it reads, is
        missing."""
        x = features(bins, k, self.history)
        if x is None:
            return None
        base = sum(b * v for b, v in zip(self.coefficients, x, strict=True))
        if not self.terms:
            return base
        by_name, loss, parts = dict(params), x[1], 0.0
        for term in self.terms:
            part = term.value(by_name, loss)
            if part is None:
                return None
            parts += part
        return base + parts


@dataclass(frozen=True, slots=True)
class Calibration:
    """Per bin the fitted line (None: the bin is not used), the common ``z``, and the lowest
    final the fit saw (an incumbent below it is judged as if it were there)."""

    lines: tuple[Line | None, ...]
    z: float = math.inf
    seed_sd: float = 0.0
    curves: int = 0
    reason: str = ""

    @property
    def on(self) -> bool:
        return math.isfinite(self.z) and any(line is not None for line in self.lines)

    def bound(
        self, bins: Sequence[float | None], k: int, params: Coordinates = ()
    ) -> tuple[float, float] | None:
        """A run's predicted final from its curve up to bin ``k`` (and its hyperparameters
        ``params``), and the lowest it may still end at; None when bin ``k`` is not used."""
        line = self.lines[k] if self.on else None
        predicted = line.predict(bins, k, params) if line is not None else None
        if line is None or predicted is None:
            return None
        return predicted, predicted - self.z * line.spread

    def threshold(self, incumbent: float, runs: int = 1) -> float:
        """The final a stopped run must be sure to end above, against ``incumbent``, the mean
        final of ``runs`` runs: both it and the run's own final carry seed noise."""
        return incumbent + SEED_Z * self.seed_sd * math.sqrt(1 + 1 / max(1, runs))

    def describe(self) -> dict[str, Any]:
        """What ``status`` shows: on or off, from which fraction, and on how many curves."""
        used = [k for k, line in enumerate(self.lines) if line is not None] if self.on else []
        return {
            "on": self.on,
            "from_fraction": (used[0] + 1) / BINS if used else None,
            "bins": len(used),
            "curves": self.curves,
            "z": round(self.z, 3) if self.on else None,
            "reason": "" if self.on else self.reason,
        }


OFF = Calibration(lines=(None,) * BINS, reason="not calibrated yet")


def calibrate(samples: Sequence[Sample], shapes: Sequence[Shape] = SHAPES) -> Calibration:
    """The limits the stored curves allow (see the module docstring); ``shapes``: the
    nonlinear hyperparameter terms the fits may read."""
    newest = sorted(samples, key=lambda s: s.completed_at)[-MAX_CURVES:]
    sources = len({s.sha256 for s in newest})
    if len(newest) < MIN_CURVES or sources < MIN_SOURCES:
        reason = (
            f"{len(newest)} finished curves of {sources} sources, "
            f"needs {MIN_CURVES} of {MIN_SOURCES}"
        )
        return Calibration((None,) * BINS, curves=len(newest), reason=reason)
    seed_sd, dof = _seed_noise(newest)
    if dof < MIN_SEED_DOF:
        reason = f"{dof} repeated runs of one source to measure seed noise, needs {MIN_SEED_DOF}"
        return Calibration((None,) * BINS, curves=len(newest), reason=reason)
    ranked = sorted(newest, key=lambda s: s.final)
    top = ranked[: max(MIN_TOP + 1, math.ceil(TOP_SHARE * len(ranked)))]
    rest = ranked[len(top) :]
    reference = ranked[int(INCUMBENT_SHARE * len(ranked))].final
    inputs = _Inputs(top, _shared_names(top), shapes)
    fits = [_fit(top, k, inputs) if FIRST_BIN <= k < BINS - 1 else None for k in range(BINS)]
    used = [k for k, fit in enumerate(fits) if fit is not None]
    # A bin's predictions of the rest do not change from one pass to the next: made once.
    predicted: dict[int, list[float]] = {}
    z = math.inf
    # Dropping a bin lowers z, which can only raise the others' power: a few passes settle.
    for _ in range(BINS):
        z = _conformal_z(top, fits, used)
        if not math.isfinite(z):
            break
        threshold = reference + SEED_Z * seed_sd
        powered = [
            k
            for k in used
            if _power(rest, fits, k, threshold, z, predicted) * (1 - (k + 1) / BINS) >= MIN_POWER
        ]
        if powered == used:
            break
        used = powered
    lines = tuple(fit[0] if fit is not None and k in used else None for k, fit in enumerate(fits))
    calibration = Calibration(lines, z, seed_sd, len(newest))
    if not calibration.on:
        reason = "stored curves do not predict the final val_bpb at any fraction of the budget"
        return Calibration((None,) * BINS, curves=len(newest), reason=reason)
    return calibration


def _seed_noise(samples: Sequence[Sample]) -> tuple[float, int]:
    """The pooled standard deviation of finals between runs of one source, and its degrees
    of freedom."""
    groups: dict[str, list[float]] = {}
    for s in samples:
        groups.setdefault(s.sha256, []).append(s.final)
    squares, dof = 0.0, 0
    for values in groups.values():
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    return (math.sqrt(squares / dof) if dof else 0.0), dof


_Fit = tuple[Line, dict[int, float]]  # the line, and each top run's standardised error


class _Inputs:
    """The hyperparameter terms the fits over the top runs read, and their inputs: the
    shared hyperparameters ``names``, standardised over a fit's rows, then per shape in
    ``shapes`` their squares and their products with the loss at the bin (:func:`_shaped`).
    Most bins fit the same rows (the top runs with every bin they read), so the
    standardisation, and the inputs that do not read the loss at the bin, are made once per
    set of rows rather than once per bin."""

    def __init__(
        self, top: Sequence[Sample], names: Sequence[str], shapes: Sequence[Shape]
    ) -> None:
        self.params = [dict(s.params) for s in top]
        self.names = names
        self.shapes = shapes
        self._fixed: dict[tuple[int, ...], tuple[list[Term], int, list[list[float]]]] = {}

    def of(
        self, rows: Sequence[int], losses: Sequence[float]
    ) -> tuple[list[Term], list[list[float]]]:
        """The terms for the top runs ``rows``, whose losses at the bin are ``losses``, and
        each row's inputs (one per term)."""
        key = tuple(rows)
        if key not in self._fixed:
            params = [self.params[i] for i in key]
            linear = _standardise(params, self.names)
            fixed = _shaped(linear, [], self.shapes)  # with no losses: no products
            z = [[t.column(p[t.name], 0.0) for t in fixed] for p in params]
            self._fixed[key] = linear, len(fixed), z
        linear, width, z = self._fixed[key]
        terms = _shaped(linear, losses, self.shapes)
        products = terms[width:]
        if products:
            z = [
                [*inputs, *(t.column(self.params[i][t.name], loss) for t in products)]
                for inputs, i, loss in zip(z, key, losses, strict=True)
            ]
        return terms, z


def _fit(top: Sequence[Sample], k: int, inputs: _Inputs) -> _Fit | None:
    """Bin ``k``'s prediction over the top runs, with leave-one-out errors (how much better
    each run ended than predicted without it); None when the bin has too few runs or the
    prediction does not rise with the loss (a whole curve shifted up must predict a worse
    final). The hyperparameter terms (``inputs``) join the curve's features, ridge-penalised
    at the penalty whose leave-one-out error is lowest, only where that beats the curve
    alone."""
    history = "history" in inputs.shapes
    rows = [(i, x, s) for i, s in enumerate(top) if (x := features(s.bins, k, history)) is not None]
    if len(rows) < MIN_TOP:
        return None
    scales, z = inputs.of([i for i, _, _ in rows], [x[1] for _, x, _ in rows])
    penalties = [share * len(rows) for share in PENALTY_SHARES] if scales else []
    y = [s.final for _, _, s in rows]
    size = len(rows[0][1])
    candidates = [
        fit
        for fit in ridge.fits([x for _, x, _ in rows], z, y, penalties)
        if sum(fit.coefficients[1:size]) > 0
    ]
    if not candidates:
        return None
    fit = min(candidates, key=lambda f: f.loo_mse)  # the first, the curve alone, on a tie
    spread = math.sqrt(fit.loo_mse)
    if not spread > 0:
        return None
    terms: tuple[Term, ...] = ()
    if math.isfinite(fit.penalty):
        on_z = fit.coefficients[size:]
        terms = tuple(replace(t, coefficient=b) for t, b in zip(scales, on_z, strict=True))
    line = Line(fit.coefficients[:size], spread, terms, history)
    return line, {i: r / spread for (i, _, _), r in zip(rows, fit.loo, strict=True)}


def _standardise(params: Sequence[Mapping[str, float]], names: Sequence[str]) -> list[Term]:
    """Per hyperparameter among ``names`` that varies over ``params``: its mean, standard
    deviation and range (the coefficient is left to the fit)."""
    terms = []
    for name in names:
        values = [p[name] for p in params]
        centre = statistics.fmean(values)
        scale = statistics.pstdev(values, centre)
        if scale > 1e-9 * (1 + abs(centre)):
            terms.append(Term(name, centre, scale, min(values), max(values), 0.0))
    return terms


def _shaped(linear: list[Term], losses: Sequence[float], shapes: Sequence[Shape]) -> list[Term]:
    """The linear terms, then per shape asked for one more term per hyperparameter: its
    square, or its product with the loss at the bin (standardised over ``losses``, the fit's
    rows' own; none without them)."""
    terms = list(linear)
    if "square" in shapes:
        terms += [replace(t, power=2) for t in linear]
    if "product" not in shapes or not losses:
        return terms
    centre = statistics.fmean(losses)
    scale = statistics.pstdev(losses, centre)
    if scale > 1e-9 * (1 + abs(centre)):
        terms += [replace(t, loss=(centre, scale)) for t in linear]
    return terms


def _shared_names(samples: Sequence[Sample]) -> list[str]:
    """The hyperparameters every one of ``samples`` carries (none when one carries none:
    a run whose source is unknown)."""
    shared = set(dict(samples[0].params)) if samples else set()
    for s in samples[1:]:
        shared &= set(dict(s.params))
    return sorted(shared)


def _conformal_z(top: Sequence[Sample], fits: Sequence[_Fit | None], used: Sequence[int]) -> float:
    """The split-conformal (1 - TARGET_LOSS) quantile of each top run's largest standardised
    residual over the bins ``used``; infinite when there are too few runs to bound it."""
    if not used:
        return math.inf
    largest = []
    for i in range(len(top)):
        residuals = [r for k in used if (fit := fits[k]) and (r := fit[1].get(i)) is not None]
        if residuals:
            largest.append(max(residuals))
    rank = math.ceil((len(largest) + 1) * (1 - TARGET_LOSS))
    if rank > len(largest):
        return math.inf
    return max(0.0, sorted(largest)[rank - 1])


def _power(
    rest: Sequence[Sample],
    fits: Sequence[_Fit | None],
    k: int,
    reference: float,
    z: float,
    made: dict[int, list[float]],
) -> float:
    """The share of stored runs outside the top that bin ``k`` stops against an incumbent at
    ``reference``; ``made``: the predictions of the rest per bin, so far."""
    fit = fits[k]
    if fit is None:
        return 0.0
    line = fit[0]
    if k not in made:
        made[k] = [p for s in rest if (p := line.predict(s.bins, k, s.params)) is not None]
    predicted = made[k]
    if not predicted:
        return 0.0
    return sum(1 for p in predicted if p - z * line.spread > reference) / len(predicted)
