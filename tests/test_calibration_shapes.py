"""The calibration's nonlinear hyperparameter terms: where a rate too high and too low both
end worse than the curve says, only a fit that reads the rate's square predicts the end; where
how much the loss says of the end depends on the rate, only one that reads their product."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from autoresearchd.calibration import Shape, Term, calibrate, features
from autoresearchd.curves import BINS, Sample
from tests.test_calibration_hyperparams import prediction_error, used_bins
from tests.test_early_stopping import curve_bins

#: A run's final sits BOWL * (rate - 0.5)**2 above what its curve shows.
BOWL = 0.4


def rate_track(
    seed: int, final: Callable[[float, float], float], sources: int = 80
) -> list[Sample]:
    """Runs whose curve shows their level alone and whose final is ``final(level, rate)``,
    with seed noise."""
    rng = random.Random(seed)
    samples = []
    for s in range(sources):
        level, rate = rng.uniform(1.0, 1.5), rng.uniform(0.0, 1.0)
        for r in range(2):
            offset = rng.gauss(0, 0.004)
            bins = tuple(v + rng.gauss(0, 0.003) for v in curve_bins(level, offset=offset))
            samples.append(
                Sample(f"s{s}", bins, final(level, rate) + offset, 2 * s + r, (("LR", rate),))
            )
    return samples


def bowl_track(seed: int, sources: int = 80) -> list[Sample]:
    """Finals worse than the curve shows by the rate's distance from the middle squared."""
    return rate_track(seed, lambda level, rate: level + BOWL * (rate - 0.5) ** 2, sources)


def slope_track(seed: int, sources: int = 80) -> list[Sample]:
    """Finals that follow the curve's level with a slope set by the rate: at rate 0 half the
    gap to 1.25 is left at the end, at rate 1 one and a half times it."""
    return rate_track(seed, lambda level, rate: 1.25 + (level - 1.25) * (0.5 + rate), sources)


def shapes_read(samples: list[Sample], shapes: tuple[Shape, ...]) -> list[tuple[int, int | None]]:
    calibration = calibrate(samples, shapes)
    assert calibration.on, calibration.reason
    terms = set()
    for k in used_bins(calibration):
        line = calibration.lines[k]
        assert line is not None
        terms |= {(t.power, None if t.loss is None else 1) for t in line.terms}
    return sorted(terms, key=repr)


def test_only_the_fit_that_reads_the_rates_square_predicts_a_bowl() -> None:
    linear, squared = calibrate(bowl_track(1)), calibrate(bowl_track(1), ("square",))
    assert linear.on and squared.on, (linear.reason, squared.reason)
    fresh = bowl_track(2, sources=100)
    # A line in the rate cannot bend: its error is about BOWL times the square's spread.
    assert prediction_error(linear, fresh) > 0.015
    assert prediction_error(squared, fresh) < 0.01
    assert (2, None) in shapes_read(bowl_track(1), ("square",))


def test_only_the_fit_that_reads_rate_times_loss_predicts_a_slope_set_by_the_rate() -> None:
    linear, product = calibrate(slope_track(3)), calibrate(slope_track(3), ("product",))
    assert linear.on and product.on, (linear.reason, product.reason)
    fresh = slope_track(4, sources=100)
    assert prediction_error(linear, fresh) > 0.025
    assert prediction_error(product, fresh) < 0.01
    assert (1, 1) in shapes_read(slope_track(3), ("product",))


def test_beyond_the_fitted_range_a_nonlinear_term_counts_no_more_than_at_its_edge() -> None:
    bowl = Term("LR", centre=0.5, scale=0.25, low=0.0, high=1.0, coefficient=0.1, power=2)
    assert bowl.value({"LR": 0.75}) == pytest.approx(0.1)  # inside: the square itself
    assert bowl.value({"LR": 2.0}) == pytest.approx(0.4)  # held at the edge, not 3.6
    by_loss = Term("LR", 0.5, 0.25, 0.0, 1.0, coefficient=0.1, loss=(1.2, 0.1))
    assert by_loss.value({"LR": 0.75}, 1.4) == pytest.approx(0.2)  # u 1, loss 2 sd up
    assert by_loss.value({"LR": 1.5}, 1.4) == pytest.approx(0.4)  # at the edge u is 2
    assert by_loss.value({"LR": 1.5}, 1.0) == pytest.approx(-0.8)  # extrapolated: lower


def test_with_history_a_bin_also_reads_the_loss_a_quarter_and_three_quarters_there() -> None:
    bins = tuple(float(k) for k in range(BINS))
    assert features(bins, 12, history=True) == (1.0, 12.0, 11.0, 9.0, 6.0, 3.0)
    assert features(bins, 12) == (1.0, 12.0, 11.0, 6.0)


def early_dip_track(seed: int, sources: int = 80) -> list[Sample]:
    """Runs whose loss over the first fifth of the budget sits ``dip`` above the rest of their
    curve, and whose final is lower by half the dip (what sits in the first bins matters)."""
    rng = random.Random(seed)
    samples = []
    for s in range(sources):
        quality, dip = rng.uniform(1.0, 1.5), rng.uniform(0.0, 0.3)
        for r in range(2):
            offset = rng.gauss(0, 0.004)
            curve = curve_bins(quality, offset=offset)
            bins = tuple(
                v + (dip if k < 4 else 0.0) + rng.gauss(0, 0.003) for k, v in enumerate(curve)
            )
            samples.append(Sample(f"s{s}", bins, quality - dip / 2 + offset, 2 * s + r))
    return samples


def test_only_the_fit_that_reads_more_of_the_curve_sees_an_early_dip_at_bin_twelve() -> None:
    # The daemon's calibration (SHAPES) reads more of the curve; () the three bins alone.
    plain, history = calibrate(early_dip_track(5), ()), calibrate(early_dip_track(5))
    fresh = early_dip_track(6, sources=100)
    errors = []
    for calibration in (plain, history):
        line = calibration.lines[12]
        assert line is not None
        predicted = [(line.predict(s.bins, 12), s.final) for s in fresh]
        errors.append(max(abs(p - final) for p, final in predicted if p is not None))
    assert errors[0] > 0.05 and errors[1] < 0.03
