"""The calibration's prediction of a final: what it reads of a curve, and what that buys on
curves with noisy reports."""

from __future__ import annotations

import random

from autoresearchd.calibration import calibrate, features
from autoresearchd.curves import BINS, Sample
from tests.test_early_stopping import curve_bins, first_stop, judge_of, track_history


def noisy_track(seed: int, sources: int = 80, report_sd: float = 0.03) -> list[Sample]:
    """Sources run twice each, seed noise 0.005, with report noise on every bin several times
    the spread of the finals it must tell apart."""
    rng = random.Random(seed)
    samples = []
    for s in range(sources):
        quality = 1.0 + 0.002 * s
        for run in range(2):
            offset = rng.gauss(0, 0.005)
            bins = tuple(v + rng.gauss(0, report_sd) for v in curve_bins(quality, offset=offset))
            samples.append(Sample(f"src{s}", bins, quality + offset, completed_at=2 * s + run))
    return samples


def test_a_bin_reads_the_loss_there_the_bin_before_and_half_way() -> None:
    bins = tuple(float(k) for k in range(BINS))
    assert features(bins, 9) == (1.0, 9.0, 8.0, 4.0)
    assert features(bins, 1) == (1.0, 1.0, 0.0)  # the bin before is the half-way one
    holed = (*bins[:8], None, *bins[9:])
    assert features(holed, 9) is None


def test_a_curve_behind_everywhere_predicts_a_worse_final() -> None:
    calibration = calibrate(track_history(bloomers=False))
    assert calibration.on, calibration.reason
    curve = curve_bins(1.1)
    behind = tuple(v + 0.05 for v in curve)
    used = [k for k, line in enumerate(calibration.lines) if line is not None]
    assert used
    for k in used:
        line = calibration.lines[k]
        assert line is not None
        now, later = line.predict(curve, k), line.predict(behind, k)
        assert now is not None and later is not None and later > now


def test_a_missing_bin_before_stops_nothing_at_that_bin() -> None:
    calibration = calibrate(track_history(bloomers=False))
    judge = judge_of(calibration, 1.0)
    hopeless = curve_bins(2.5)
    k = next(k for k, line in enumerate(calibration.lines) if line is not None)
    assert judge.verdict(hopeless, k, (k + 1) / BINS) is not None
    holed = tuple(None if j == k - 1 else v for j, v in enumerate(hopeless))
    assert judge.verdict(holed, k, (k + 1) / BINS) is None


def test_noisy_reports_still_stop_a_run_clearly_behind_and_never_one_ahead() -> None:
    """Report noise six times the seed noise: the bin before averages some of it away, so a
    run 0.06 behind stops within the first half of its budget and runs at or ahead of the
    incumbent, with the same noise, run on."""
    calibration = calibrate(noisy_track(7))
    assert calibration.on, calibration.reason
    judge = judge_of(calibration, 1.02)
    rng = random.Random(8)

    def noisy(final: float) -> tuple[float, ...]:
        return tuple(v + rng.gauss(0, 0.03) for v in curve_bins(final))

    behind = [first_stop(judge, noisy(1.08)) for _ in range(200)]
    assert sum(k is not None and k < BINS // 2 for k in behind) > 0.9 * len(behind)
    ahead = [first_stop(judge, noisy(1.0)) for _ in range(200)]
    assert sum(k is not None for k in ahead) <= 0.02 * len(ahead)
