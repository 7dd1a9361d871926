"""Stored learning curves: a run's curve by bin, and a finished run as calibration sees it.

A result stores its curve compactly: the mean loss in each of :data:`BINS` equal parts of
the budget, as (mean fraction, mean loss) points (``Result.curve``). Any daemon reads a stored
curve back by bin (:func:`bins_of`), whatever resolution it was written at, and turns a
finished run into a :class:`Sample` (:func:`sample_of`) for the calibration, with the
run's hyperparameters read from its stored train.py (:func:`coordinates`): a result stored
before any daemon read them carries its source all the same.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from autoresearchd.errors import MutationError
from autoresearchd.hyperparams import parse_params
from autoresearchd.literals import exponent_of, is_number
from autoresearchd.models import Result, Status

#: A run's curve is its mean loss in each of this many equal parts of the budget.
BINS = 20

Curve = tuple[tuple[float, float], ...]
#: A curve by bin: the mean loss in each, None where the run reported nothing.
Bins = tuple[float | None, ...]
#: A run's numeric hyperparameters by name, each on the scale its space moves on, sorted.
Coordinates = tuple[tuple[str, float], ...]


def bins_of(curve: Iterable[tuple[float, float]]) -> Bins:
    """A stored curve by bin; a curve of another resolution lands in the nearest bins."""
    sums, counts = [0.0] * BINS, [0] * BINS
    for fraction, loss in curve:
        k = min(BINS - 1, max(0, int(fraction * BINS)))
        sums[k] += loss
        counts[k] += 1
    return tuple(s / n if n else None for s, n in zip(sums, counts, strict=True))


# Each entry keeps a whole train.py alive, and a run's own source is parsed again only a
# few times (its judge, then its sample): a small cache is enough.
@functools.lru_cache(maxsize=32)
def coordinates(source: str) -> Coordinates:
    """A train.py's movable numeric hyperparameters on the scale their space moves on (log10
    of a ``log`` one, the exponent of a ``pow2`` one, the value of an ``int`` or ``float``
    one); empty for a script that does not parse. Fixed and choice ones carry no scale."""
    try:
        params = parse_params(source)
    except MutationError:
        return ()
    found = []
    for name, param in params.items():
        kind, value = param.space.kind, param.value
        if kind == "pow2":
            exponent = exponent_of(value)
            if exponent is not None:
                found.append((name, float(exponent)))
        elif kind in ("int", "float") and is_number(value):
            found.append((name, float(value)))
        elif kind == "log" and is_number(value) and value > 0:
            found.append((name, math.log10(value)))
    return tuple(sorted((n, v) for n, v in found if math.isfinite(v)))


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished run as the calibration sees it: its source, curve and final val_bpb, and
    its hyperparameters (empty where its source is unknown)."""

    sha256: str
    bins: Bins
    final: float
    completed_at: float = 0.0
    params: Coordinates = ()


def sample_of(result: Result) -> Sample | None:
    """A finished run with a curve as a calibration sample; None for anything else."""
    final = result.val_bpb
    if result.status not in (Status.KEEP, Status.DISCARD) or result.stopped_early is not None:
        return None
    if final is None or not math.isfinite(final) or not result.curve:
        return None
    return Sample(
        result.train_py_sha256,
        bins_of(result.curve),
        final,
        result.completed_at,
        coordinates(result.train_py),
    )
