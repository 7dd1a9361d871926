"""The calibration reads a run's hyperparameters beside its curve: where a learning rate the
loss mid-run hides decides the final, only a fit that reads it predicts the end, and two
runs with one curve are judged by their rates. Results without hyperparameters still work."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from autoresearchd.calibration import TARGET_LOSS, Calibration, Term, calibrate
from autoresearchd.config_loader import parse_config
from autoresearchd.curves import BINS, Coordinates, Sample, coordinates, sample_of
from autoresearchd.early_stopping import EarlyStopping, Judge
from autoresearchd.memory import open_memory
from autoresearchd.models import Best, Candidate, Status
from tests.memory.conformance import make_result
from tests.test_early_stopping import curve_bins, first_stop

#: A run at rate ``u`` (0..1) sits HOT * u above its quality mid-run and ends COOL * u below.
HOT, COOL = 0.2, 0.1


def hidden_rate_run(
    quality: float, rate: float, rng: random.Random, source: str, at: float
) -> Sample:
    """One run whose curve shows ``quality + HOT * rate`` alone (a warm-down tied to the
    budget brings the hot run down only at the very end) and whose final is
    ``quality - COOL * rate``."""
    offset = rng.gauss(0, 0.004)
    bins = tuple(
        loss + rng.gauss(0, 0.003) for loss in curve_bins(quality + HOT * rate, offset=offset)
    )
    return Sample(source, bins, quality - COOL * rate + offset, at, (("LR", rate),))


def hidden_rate_track(seed: int, sources: int = 80) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for s in range(sources):
        quality, rate = rng.uniform(1.0, 1.5), rng.uniform(0.0, 1.0)
        samples += [hidden_rate_run(quality, rate, rng, f"s{s}", 2 * s + r) for r in range(2)]
    return samples


def without_params(samples: list[Sample]) -> list[Sample]:
    return [Sample(s.sha256, s.bins, s.final, s.completed_at) for s in samples]


def used_bins(calibration: Calibration) -> list[int]:
    return [k for k, line in enumerate(calibration.lines) if line is not None]


def prediction_error(calibration: Calibration, runs: list[Sample]) -> float:
    """The root-mean-square error of the predicted final over ``runs`` and the bins used."""
    squares = []
    for k in used_bins(calibration):
        line = calibration.lines[k]
        assert line is not None
        for run in runs:
            predicted = line.predict(run.bins, k, run.params)
            assert predicted is not None
            squares.append((predicted - run.final) ** 2)
    return math.sqrt(sum(squares) / len(squares))


def test_only_the_fit_that_reads_the_learning_rate_predicts_the_final() -> None:
    with_rate = calibrate(hidden_rate_track(1))
    curve_only = calibrate(without_params(hidden_rate_track(1)))
    assert with_rate.on, with_rate.reason
    fresh = hidden_rate_track(2, sources=100)
    # The curve alone cannot tell quality from rate: its error is about COOL + HOT times
    # the rate's spread given the curve; read beside the rate, only the noise is left.
    assert prediction_error(with_rate, fresh) < 0.015
    if curve_only.on:
        assert prediction_error(curve_only, without_params(fresh)) > 0.04
    for k in used_bins(with_rate):
        line = with_rate.lines[k]
        assert line is not None and [t.name for t in line.terms] == ["LR"]
        assert line.terms[0].coefficient < 0  # a hotter run ends lower for the same curve


def test_two_runs_with_one_curve_are_judged_by_their_learning_rates() -> None:
    calibration = calibrate(hidden_rate_track(3))
    assert calibration.on, calibration.reason
    curve = curve_bins(1.3)  # quality + HOT * rate = 1.3 for both
    hot: Coordinates = (("LR", 1.0),)  # quality 1.1: ends at 1.0
    cold: Coordinates = (("LR", 0.0),)  # quality 1.3: ends at 1.3
    incumbent = 1.1

    def judge(params: Coordinates) -> Judge:
        return Judge(calibration, incumbent, 2, audit=False, params=params)

    assert first_stop(judge(hot), curve) is None
    assert first_stop(judge(cold), curve) is not None
    # A run that does not say its rate is not stopped by a fit that needs it.
    assert first_stop(judge(()), curve) is None


def test_at_most_the_target_share_of_hot_improvements_is_stopped() -> None:
    """The loss promise holds with the rate read: of fresh runs that end below the
    incumbent, hot ones included, about TARGET_LOSS at most are stopped; most far behind are."""
    calibration = calibrate(hidden_rate_track(4))
    assert calibration.on, calibration.reason
    incumbent = 1.15
    fresh = hidden_rate_track(5, sources=1500)
    better = [s for s in fresh if s.final < incumbent]
    judges = {s.params: Judge(calibration, incumbent, 2, params=s.params) for s in better}
    stopped = sum(first_stop(judges[s.params], s.bins) is not None for s in better)
    assert len(better) > 300 and stopped / len(better) <= 2 * TARGET_LOSS
    worse = [s for s in fresh if s.final > 1.35]
    stops = sum(
        first_stop(Judge(calibration, incumbent, 2, params=s.params), s.bins) is not None
        for s in worse
    )
    assert stops > 0.5 * len(worse)


def test_stored_runs_without_hyperparameters_leave_the_fit_on_the_curve_alone() -> None:
    """A result stored without its source (another client's) carries no hyperparameters:
    while one is among the top runs, the fit reads the curve alone and still calibrates."""
    track = hidden_rate_track(6)
    best = min(range(len(track)), key=lambda i: track[i].final)
    track[best] = without_params([track[best]])[0]
    calibration = calibrate(track)
    lines = [line for line in calibration.lines if line is not None]
    assert lines and all(line.terms == () for line in lines)


SOURCE = """\
LR = 0.01  # search: log 1e-4..1e-1
BATCH = 2**15
WARMDOWN = 0.3  # search: float 0.05..0.9
DEPTH = 4  # search: int 2..12
NAME = "gpt"
OPTIMIZER = "adam"  # search: choice "adam" "sgd"
"""


def test_a_sources_hyperparameters_are_read_on_the_scale_they_move_on() -> None:
    assert coordinates(SOURCE) == (
        ("BATCH", 15.0),
        ("DEPTH", 4.0),
        ("LR", -2.0),
        ("WARMDOWN", 0.3),
    )
    assert coordinates("LR = (\n") == ()  # a script that does not parse has none
    sample = sample_of(make_result(train_py=SOURCE, curve=((0.5, 2.0),), val_bpb=1.0))
    assert sample is not None and sample.params == coordinates(SOURCE)


def test_a_candidates_judge_carries_its_hyperparameters() -> None:
    stopping = EarlyStopping()
    stopping._track("t", "cpu").calibration = calibrate(hidden_rate_track(7))
    auto = parse_config({"experiment": {"early_stopping": "auto", "track": "t"}}).experiment
    child = Candidate(SOURCE, parent_sha256="p" * 64, description="LR")
    best = Best("t", None, 1.1, "", "b" * 64, "r", "a", 0.0)
    curve = stopping.curve_for(auto, "cpu", child, best)
    assert curve is not None and curve._judge is not None
    judge = curve._judge()
    assert judge is not None and judge.params == coordinates(SOURCE)
    assert BINS == len(judge.calibration.lines)


def test_hyperparameters_that_do_not_matter_keep_the_loss_promise() -> None:
    """Twenty hyperparameters, none of which moves the final: the fit may read them where
    they seem to help, but of fresh improvements at most about TARGET_LOSS are stopped."""
    rng = random.Random(12)

    def junk() -> Coordinates:
        return tuple((f"P{j:02d}", rng.random()) for j in range(20))

    def draw(sources: int) -> list[Sample]:
        samples = []
        for s in range(sources):
            quality, amplitude, params = rng.uniform(1.0, 1.6), rng.uniform(0.5, 1.5), junk()
            for run in range(2):
                final = quality + rng.gauss(0, 0.003)
                bins = tuple(
                    loss + 0.01 * rng.gauss(0, 1) / max(0.3, abs(rng.gauss(0, 1)))
                    for loss in curve_bins(final, amplitude=amplitude)
                )
                samples.append(Sample(f"s{s}", bins, final, 2 * s + run, params))
        return samples

    calibration = calibrate(draw(150))
    assert calibration.on, calibration.reason
    incumbent = 1.15
    fresh = draw(2000)
    better = [s for s in fresh if s.final < incumbent]
    stopped = sum(
        first_stop(Judge(calibration, incumbent, 2, params=s.params), s.bins) is not None
        for s in better
    )
    assert len(better) > 500 and stopped / len(better) <= 2 * TARGET_LOSS


def test_beyond_the_fitted_range_a_term_counts_against_a_run_no_more_than_at_its_edge() -> None:
    """A rate beyond those fitted extrapolates where it predicts a lower final (the way the
    best went) and stops at the range's edge where it would predict a higher one."""
    falls = Term("LR", centre=0.5, scale=0.25, low=0.0, high=1.0, coefficient=-0.1)
    assert falls.value({"LR": 1.5}) == pytest.approx(-0.4)  # extrapolated: ends lower still
    assert falls.value({"LR": -1.0}) == pytest.approx(0.2)  # held at the edge, 0.0
    assert falls.value({"LR": 0.75}) == pytest.approx(-0.1)  # inside: the line itself
    assert falls.value({}) is None


@pytest.mark.anyio
async def test_a_refresh_reads_the_hyperparameters_of_each_stored_results_source(
    tmp_path: Path,
) -> None:
    """Stored results carry their train.py: the daemon's refresh reads each one's learning
    rate from it, so the calibration it builds reads the rate beside the curve."""
    raw = {
        "daemon": {"state_dir": str(tmp_path / "state"), "agent": "tester"},
        "experiment": {"early_stopping": "auto", "track": "synthetic"},
    }
    config = parse_config(raw, source=tmp_path / "config.toml")
    async with open_memory(config) as memory:
        for sample in hidden_rate_track(8):
            rate = dict(sample.params)["LR"]
            await memory.publish(
                make_result(
                    track="synthetic",
                    vram_tier="cpu",
                    status=Status.DISCARD,
                    train_py=f"LR = {rate!r}  # search: float 0.0..1.0\n",
                    val_bpb=sample.final,
                    curve=tuple(((k + 0.5) / BINS, v) for k, v in enumerate(sample.bins)),
                    completed_at=1_700_000_000.0 + sample.completed_at,
                )
            )
        calibration = await EarlyStopping().refresh(memory, config.experiment, "cpu", limit=500)
    assert calibration.on, calibration.reason
    lines = [line for line in calibration.lines if line is not None]
    assert lines and all([t.name for t in line.terms] == ["LR"] for line in lines)
