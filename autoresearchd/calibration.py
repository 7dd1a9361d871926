"""Calibration of early stopping on stored curves: per bin, a prediction of the final val_bpb
and how far a run like an improvement may beat it.

A stop answers a test: could this run still end below the incumbent's val_bpb? Per bin ``k``
(a twentieth of the budget), over the newest :data:`MAX_CURVES` finished runs whose final is
among the best :data:`TOP_SHARE` (the runs an improvement resembles), :func:`calibrate` fits
by least squares the final from the loss at ``k``, at ``k - 1`` and at ``k // 2``
(:func:`features`: the two last bins average away some of the report noise, and with the
half-way bin they show how fast the run still falls), with each run's leave-one-out error
(predicted by a fit without it) and the errors' spread ``s_k``.

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

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autoresearchd.curves import BINS, Sample

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


def features(bins: Sequence[float | None], k: int) -> tuple[float, ...] | None:
    """What bin ``k``'s fit reads of a curve: the loss there and at the bin before (their
    mix smooths the report noise and shows how fast the run still falls) and at bin
    ``k // 2`` (how far it came); None when a bin among them is missing."""
    picked = [bins[j] for j in sorted({k, max(0, k - 1), k // 2}, reverse=True)]
    if any(v is None for v in picked):
        return None
    return (1.0, *(v for v in picked if v is not None))


@dataclass(frozen=True, slots=True)
class Line:
    """One bin's fit: the final predicted from :func:`features` of a curve, and the spread
    of the prediction's leave-one-out errors."""

    coefficients: tuple[float, ...]
    spread: float

    def predict(self, bins: Sequence[float | None], k: int) -> float | None:
        x = features(bins, k)
        if x is None:
            return None
        return sum(b * v for b, v in zip(self.coefficients, x, strict=True))


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

    def bound(self, bins: Sequence[float | None], k: int) -> tuple[float, float] | None:
        """A run's predicted final from its curve up to bin ``k``, and the lowest it may
        still end at; None when bin ``k`` is not used."""
        line = self.lines[k] if self.on else None
        predicted = line.predict(bins, k) if line is not None else None
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


def calibrate(samples: Sequence[Sample]) -> Calibration:
    """The limits the stored curves allow (see the module docstring)."""
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
    fits = [_fit(top, k) if FIRST_BIN <= k < BINS - 1 else None for k in range(BINS)]
    used = [k for k, fit in enumerate(fits) if fit is not None]
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
            if _power(rest, fits, k, threshold, z) * (1 - (k + 1) / BINS) >= MIN_POWER
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


def _fit(top: Sequence[Sample], k: int) -> _Fit | None:
    """Bin ``k``'s prediction over the top runs, with leave-one-out errors (how much better
    each run ended than predicted without it); None when the bin has too few runs or the
    prediction does not rise with the loss (a whole curve shifted up must predict a worse
    final)."""
    rows = [(i, x, s.final) for i, s in enumerate(top) if (x := features(s.bins, k)) is not None]
    if len(rows) < MIN_TOP:
        return None
    size = len(rows[0][1])
    gram = [[sum(x[a] * x[b] for _, x, _ in rows) for b in range(size)] for a in range(size)]
    inverse = _inverse(gram)
    if inverse is None:
        return None
    xty = [sum(x[a] * y for _, x, y in rows) for a in range(size)]
    beta = [sum(inverse[a][b] * xty[b] for b in range(size)) for a in range(size)]
    if sum(beta[1:]) <= 0:
        return None
    loo: dict[int, float] = {}
    for i, x, y in rows:
        hx = [sum(inverse[a][b] * x[b] for b in range(size)) for a in range(size)]
        leverage = sum(x[a] * hx[a] for a in range(size))
        predicted = sum(b * v for b, v in zip(beta, x, strict=True))
        loo[i] = (predicted - y) / max(1e-9, 1 - leverage)
    spread = math.sqrt(sum(r * r for r in loo.values()) / len(loo))
    if not spread > 0:
        return None
    line = Line(tuple(beta), spread)
    return line, {i: r / spread for i, r in loo.items()}


def _inverse(m: list[list[float]]) -> list[list[float]] | None:
    """The inverse of a small symmetric matrix by Gauss-Jordan; None when it is singular."""
    size = len(m)
    a = [row[:] + [1.0 if i == j else 0.0 for j in range(size)] for i, row in enumerate(m)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-12:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        scale = a[col][col]
        a[col] = [v / scale for v in a[col]]
        for r in range(size):
            if r != col and a[r][col] != 0.0:
                factor = a[r][col]
                a[r] = [v - factor * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[size:] for row in a]


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
    rest: Sequence[Sample], fits: Sequence[_Fit | None], k: int, reference: float, z: float
) -> float:
    """The share of stored runs outside the top that bin ``k`` stops against an incumbent at
    ``reference``."""
    fit = fits[k]
    if fit is None:
        return 0.0
    line = fit[0]
    predicted = [p for s in rest if (p := line.predict(s.bins, k)) is not None]
    if not predicted:
        return 0.0
    return sum(1 for p in predicted if p - z * line.spread > reference) / len(predicted)
