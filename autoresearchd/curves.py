"""Stored learning curves: a run's curve by bin, and a finished run as calibration sees it.

A result stores its curve compactly: the mean loss in each of :data:`BINS` equal parts of
the budget, as (mean fraction, mean loss) points (``Result.curve``). Any daemon reads a stored
curve back by bin (:func:`bins_of`), whatever resolution it was written at, and turns a
finished run into a :class:`Sample` (:func:`sample_of`) for the calibration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from autoresearchd.models import Result, Status

#: A run's curve is its mean loss in each of this many equal parts of the budget.
BINS = 20

Curve = tuple[tuple[float, float], ...]
#: A curve by bin: the mean loss in each, None where the run reported nothing.
Bins = tuple[float | None, ...]


def bins_of(curve: Iterable[tuple[float, float]]) -> Bins:
    """A stored curve by bin; a curve of another resolution lands in the nearest bins."""
    sums, counts = [0.0] * BINS, [0] * BINS
    for fraction, loss in curve:
        k = min(BINS - 1, max(0, int(fraction * BINS)))
        sums[k] += loss
        counts[k] += 1
    return tuple(s / n if n else None for s, n in zip(sums, counts, strict=True))


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished run as the calibration sees it: its source, curve and final val_bpb."""

    sha256: str
    bins: Bins
    final: float
    completed_at: float = 0.0


def sample_of(result: Result) -> Sample | None:
    """A finished run with a curve as a calibration sample; None for anything else."""
    final = result.val_bpb
    if result.status not in (Status.KEEP, Status.DISCARD) or result.stopped_early is not None:
        return None
    if final is None or not math.isfinite(final) or not result.curve:
        return None
    return Sample(result.train_py_sha256, bins_of(result.curve), final, result.completed_at)
