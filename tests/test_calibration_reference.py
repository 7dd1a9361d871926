"""The calibration's fits, which share their standardisation and hyperparameter inputs
between bins that fit the same runs, equal each bin's fit made from scratch, also where
runs missing some bins make bins fit different runs."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from autoresearchd import ridge
from autoresearchd.calibration import (
    MAX_CURVES,
    MIN_TOP,
    PENALTY_SHARES,
    TOP_SHARE,
    Line,
    Shape,
    Term,
    calibrate,
    features,
)
from autoresearchd.curves import BINS, Sample


def history(seed: int, sources: int = 90) -> list[Sample]:
    """Runs whose final their curve and three hyperparameters predict, one in four missing
    the bins between the second and the fifth (a run that reported nothing there)."""
    rng = random.Random(seed)
    samples = []
    for s in range(sources):
        level, rates = rng.uniform(1.0, 1.5), [rng.uniform(0, 1) for _ in range(3)]
        for r in range(2):
            offset = rng.gauss(0, 0.004)
            bins: list[float | None] = [
                level + offset + (1 - (k + 0.5) / BINS) * (1 + 0.3 * rates[0]) + rng.gauss(0, 0.003)
                for k in range(BINS)
            ]
            if s % 4 == 0:
                bins[2:5] = [None] * 3
            final = level - 0.1 * rates[0] + 0.2 * (rates[1] - 0.5) ** 2 + offset
            params = (("A", rates[0]), ("B", rates[1]), ("C", rates[2]))
            samples.append(Sample(f"s{s}", tuple(bins), final, 2 * s + r, params))
    return samples


def fit_from_scratch(samples: list[Sample], k: int, shapes: tuple[Shape, ...]) -> Line | None:
    """Bin ``k``'s line as the calibration defines it, every input made for this bin alone."""
    newest = sorted(samples, key=lambda s: s.completed_at)[-MAX_CURVES:]
    ranked = sorted(newest, key=lambda s: s.final)
    top = ranked[: max(MIN_TOP + 1, math.ceil(TOP_SHARE * len(ranked)))]
    history = "history" in shapes
    rows = [(x, s) for s in top if (x := features(s.bins, k, history)) is not None]
    terms = []
    for name in ("A", "B", "C"):
        values = [dict(s.params)[name] for _, s in rows]
        centre = statistics.fmean(values)
        terms.append(Term(name, centre, statistics.pstdev(values), min(values), max(values), 0))
    if "square" in shapes:
        terms += [Term(t.name, t.centre, t.scale, t.low, t.high, 0, power=2) for t in terms[:3]]
    if "product" in shapes:
        losses = [x[1] for x, _ in rows]
        loss = (statistics.fmean(losses), statistics.pstdev(losses))
        terms += [Term(t.name, t.centre, t.scale, t.low, t.high, 0, loss=loss) for t in terms[:3]]
    z = [[t.column(dict(s.params)[t.name], x[1]) for t in terms] for x, s in rows]
    size = len(rows[0][0])
    penalties = [share * len(rows) for share in PENALTY_SHARES]
    found = ridge.fits([x for x, _ in rows], z, [s.final for _, s in rows], penalties)
    rising = [f for f in found if sum(f.coefficients[1:size]) > 0]
    if not rising:
        return None
    best = min(rising, key=lambda f: f.loo_mse)
    coefficients = best.coefficients[size:] if math.isfinite(best.penalty) else ()
    fitted = tuple(
        Term(t.name, t.centre, t.scale, t.low, t.high, b, t.power, t.loss)
        for t, b in zip(terms, coefficients, strict=False)
    )
    return Line(best.coefficients[:size], math.sqrt(best.loo_mse), fitted, history)


@pytest.mark.parametrize(
    "shapes", [(), ("history",), ("square", "history"), ("square", "product", "history")]
)
def test_each_used_bins_line_equals_its_fit_made_from_scratch(shapes: tuple[Shape, ...]) -> None:
    samples = history(7)
    calibration = calibrate(samples, shapes)
    assert calibration.on, calibration.reason
    used = [k for k, line in enumerate(calibration.lines) if line is not None]
    # Bins that read the missing ones fit fewer runs than the rest: both kinds are compared.
    assert any(features(samples[0].bins, k, "history" in shapes) is None for k in used)
    assert any(features(samples[0].bins, k, "history" in shapes) is not None for k in used)
    read = set()
    for k in used:
        line, expected = calibration.lines[k], fit_from_scratch(samples, k, shapes)
        assert line is not None and expected is not None
        assert line.coefficients == pytest.approx(expected.coefficients, rel=1e-9, abs=1e-12)
        assert line.spread == pytest.approx(expected.spread, rel=1e-9)
        assert len(line.terms) == len(expected.terms)
        for got, want in zip(line.terms, expected.terms, strict=True):
            assert (got.name, got.power, got.low, got.high) == (
                want.name,
                want.power,
                want.low,
                want.high,
            )
            assert (got.centre, got.scale) == pytest.approx((want.centre, want.scale), rel=1e-12)
            assert got.coefficient == pytest.approx(want.coefficient, rel=1e-9, abs=1e-12)
            assert (got.loss is None) == (want.loss is None)
            if got.loss is not None and want.loss is not None:
                assert got.loss == pytest.approx(want.loss, rel=1e-12)
        read |= {(t.power, t.loss is not None) for t in line.terms}
    assert (1, False) in read  # the hyperparameters are read at some bins
