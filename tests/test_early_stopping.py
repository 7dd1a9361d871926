"""Early stopping: progress lines, learning curves, the calibrated rule, and a stopped run."""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from autoresearchd.calibration import MIN_CURVES, TARGET_LOSS, Calibration, calibrate
from autoresearchd.config_loader import parse_config
from autoresearchd.curves import BINS, Sample, bins_of
from autoresearchd.early_stopping import EarlyStopping, Judge, LearningCurve, make_judge
from autoresearchd.gpus import Gpus
from autoresearchd.memory import open_memory
from autoresearchd.models import Best, Candidate, Device, Result, Status
from autoresearchd.outbox import Outbox
from autoresearchd.progress import MAX_LINE, Progress, parse_progress
from autoresearchd.publisher import Publisher
from autoresearchd.report import results_table, status_text
from autoresearchd.testing import FakeNvml, curve_script, write_workspace
from autoresearchd.worker.context import WorkerContext
from autoresearchd.worker.loop import Worker
from tests.memory.conformance import make_result

# -- the progress parser ---------------------------------------------------------------------


def test_karpathy_progress_line() -> None:
    line = (
        "step 00123 (41.0%) | loss: 3.214500 | lrm: 0.92 | dt: 315ms | tok/sec: 1,664,000 "
        "| mfu: 39.8% | epoch: 1 | remaining: 177s    "
    )
    assert parse_progress(line) == Progress(3.2145, 0.41, 123)


def test_reference_and_stand_in_progress_lines() -> None:
    reference = "step 00042 ( 12.5%) | loss 2.7182 | tok/s 1,234 | left 3.1s   "
    assert parse_progress(reference) == Progress(2.7182, 0.125, 42)
    # Without a percent, step/total places it.
    assert parse_progress("step 2/5 loss 1.5000") == Progress(1.5, 0.4, 2)
    assert parse_progress("step 7 | loss: 1.25") == Progress(1.25, None, 7)


def test_json_progress_line() -> None:
    line = 'AUTORESEARCH_PROGRESS {"fraction": 0.25, "loss": 2.5, "step": 10}'
    assert parse_progress(line) == Progress(2.5, 0.25, 10, json=True)
    assert parse_progress('AUTORESEARCH_PROGRESS {"loss": 2}') == Progress(2.0, None, json=True)
    # A fraction past the end is the end.
    assert parse_progress('AUTORESEARCH_PROGRESS {"fraction": 1.2, "loss": 1}') == Progress(
        1.0, 1.0, json=True
    )


@pytest.mark.parametrize(
    "line",
    [
        "",
        "---",
        "val_bpb: 0.9979",
        "loss: 3.0",  # no step: a summary or a stray print, not progress
        "stepping up | loss: 3.0",
        "step 5 | loss: nan",
        "step 5 | loss: 1e999",
        "step 5 | loss: -1e300",
        "step 5 | val: 3.0",
        "AUTORESEARCH_PROGRESS",
        "AUTORESEARCH_PROGRESS not json",
        "AUTORESEARCH_PROGRESS [1, 2]",
        'AUTORESEARCH_PROGRESS {"fraction": 0.5}',
        'AUTORESEARCH_PROGRESS {"fraction": 0.5, "loss": "3"}',
        'AUTORESEARCH_PROGRESS {"fraction": 0.5, "loss": true}',
        'AUTORESEARCH_PROGRESS {"fraction": 0.5, "loss": NaN}',
        'AUTORESEARCH_PROGRESS {"fraction": 0.5, "loss": Infinity}',
        'AUTORESEARCH_PROGRESS {"fraction": -0.5, "loss": 1.0}',
        'AUTORESEARCH_PROGRESS {"fraction": "half", "loss": 1.0}',
        'AUTORESEARCH_PROGRESS {"fraction": 0.5, "loss": 1e999}',
        "AUTORESEARCH_PROGRESS " + "[" * 2000 + "]" * 2000,
        "AUTORESEARCH_PROGRESS " + '{"loss": 1' + "0" * 4000 + "}",
        "step 1 | loss: 2.0 " + "x" * MAX_LINE,
    ],
)
def test_hostile_or_foreign_lines_are_no_progress(line: str) -> None:
    assert parse_progress(line) is None


def test_curve_reads_chunks_split_anywhere() -> None:
    output = b"".join(
        f"\rstep {i:05d} ({100 * i / 40:.1f}%) | loss: {3 - i / 20:.4f} | dt: 1ms".encode()
        for i in range(1, 41)
    )
    whole, pieces = LearningCurve(10.0), LearningCurve(10.0)
    whole.feed(output + b"\n")
    for start in range(0, len(output), 7):  # lines and UTF-8 cut mid-way
        pieces.feed(output[start : start + 7])
    pieces.feed(b"\n")
    assert whole.points() == pieces.points()
    assert len(whole.points()) == BINS
    assert whole.fraction == 1.0 and whole.loss == pytest.approx(1.0)


def test_curve_skips_a_flood_line_and_stays_bounded() -> None:
    curve = LearningCurve(10.0)
    curve.feed(b"step 1 (10%) | loss: 9.0" + b"x" * (3 * MAX_LINE))
    curve.feed(b"y" * MAX_LINE + b"\nstep 2 (20%) | loss: 2.0\n")
    assert curve.points() == ((0.2, 2.0),)
    for i in range(10_000):
        curve.feed(f"step {i} ({i % 100}%) | loss: 1.0\n".encode())
    assert len(curve.points()) <= BINS


def test_the_json_channel_supersedes_text_lines() -> None:
    curve = LearningCurve(10.0)
    curve.feed(b'AUTORESEARCH_PROGRESS {"fraction": 0.52, "loss": 2.0}\n')
    curve.feed(b"\rstep 00010 (52.0%) | loss: 9.0000")
    curve.feed(b"\n")
    assert curve.points() == ((0.52, 2.0),)


def test_a_line_without_fraction_is_placed_by_the_clock() -> None:
    now = [100.0]
    curve = LearningCurve(10.0, clock=lambda: now[0])
    now[0] = 103.0
    curve.feed(b"step 7 | loss: 1.5\n")
    assert curve.points() == ((0.3, 1.5),)


def test_stored_curves_of_any_resolution_bin_alike() -> None:
    fine = tuple((i / 200, 2.0) for i in range(200))
    assert bins_of(fine) == (2.0,) * BINS
    assert bins_of(((0.5, 1.0), (0.52, 3.0)))[10] == 2.0


# -- the rule --------------------------------------------------------------------------------


def curve_bins(
    final: float, *, bloom: float = 0.0, offset: float = 0.0, amplitude: float = 1.0
) -> tuple[float, ...]:
    """A curve that falls toward ``final`` from ``amplitude`` above it; a late bloomer sits
    ``bloom`` higher mid-run."""
    return tuple(
        final + offset + amplitude * (1 - (k + 0.5) / BINS) + bloom * math.sin(math.pi * k / BINS)
        for k in range(BINS)
    )


def track_history(*, bloomers: bool, seed: int = 3, sources: int = 60) -> list[Sample]:
    """``sources`` sources run twice each, seed noise 0.01, each its own rate of descent;
    every fifth source a late bloomer."""
    rng = random.Random(seed)
    samples = []
    for s in range(sources):
        quality, amplitude = 1.0 + 0.01 * s, rng.uniform(0.5, 1.5)
        bloom = 0.3 if bloomers and s % 5 == 0 else 0.0
        for run in range(2):
            noise = rng.gauss(0, 0.01)
            bins = tuple(
                loss + rng.gauss(0, 0.005)
                for loss in curve_bins(quality, bloom=bloom, offset=noise, amplitude=amplitude)
            )
            samples.append(Sample(f"src{s}", bins, quality + noise, completed_at=s * 2 + run))
    return samples


def judge_of(calibration: Calibration, incumbent: float) -> Judge:
    judge = make_judge(calibration, incumbent, 2, random.Random(1))
    assert judge is not None
    return Judge(judge.calibration, judge.incumbent, judge.runs, audit=False)


def first_stop(judge: Judge, bins: Sequence[float | None]) -> int | None:
    """The first bin the judge stops a run with this curve at (it sees bins up to there)."""
    for k in range(BINS):
        seen = (*bins[: k + 1], *(None,) * (BINS - k - 1))
        if judge.verdict(seen, k, (k + 1) / BINS) is not None:
            return k
    return None


def test_a_hopeless_run_is_stopped_on_a_calibrated_track() -> None:
    calibration = calibrate(track_history(bloomers=False))
    assert calibration.on, calibration.reason
    judge = judge_of(calibration, 1.0)
    stopped_at = first_stop(judge, curve_bins(2.5))
    assert stopped_at is not None and stopped_at <= 2
    verdict = judge.verdict(curve_bins(2.5), stopped_at, 0.15)
    # Fitted on the best half, the prediction of a far worse run is conservative: still far
    # behind.
    assert verdict is not None and verdict.predicted > 1.3
    assert verdict.lowest > verdict.threshold > 1.0
    # A run as good as the incumbent, with its noise, runs on, whatever its descent.
    for amplitude in (0.5, 1.0, 1.5):
        assert first_stop(judge, curve_bins(1.0, offset=0.01, amplitude=amplitude)) is None
    # One clearly worse is stopped, later or sooner.
    assert first_stop(judge, curve_bins(1.3)) is not None


def test_a_late_bloomer_on_a_calibrated_track_is_not_stopped() -> None:
    calibration = calibrate(track_history(bloomers=True))
    assert calibration.on, calibration.reason
    judge = judge_of(calibration, 1.05)
    # Better than the incumbent at the end, 0.25 above its curve mid-run: it runs on.
    bloomer = curve_bins(1.0, bloom=0.3)
    incumbent = curve_bins(1.05)
    assert max(b - i for b, i in zip(bloomer, incumbent, strict=True)) > 0.2
    assert first_stop(judge, bloomer) is None
    assert first_stop(judge, curve_bins(2.5)) is not None  # the hopeless still stop


def test_at_most_the_target_share_of_fresh_improvements_is_stopped() -> None:
    """The calibration's promise, checked on runs it never saw: of fresh runs drawn like the
    stored ones that end below the incumbent, about TARGET_LOSS at most are stopped, even
    with heavy-tailed noise on the curve."""
    rng = random.Random(11)

    def draw(n: int) -> list[Sample]:
        samples = []
        for i in range(0, n, 2):  # each source run twice
            quality, amplitude = rng.uniform(1.0, 1.6), rng.uniform(0.5, 1.5)
            for run in range(2):
                final = quality + rng.gauss(0, 0.003)
                bins = tuple(
                    loss + 0.01 * rng.gauss(0, 1) / max(0.3, abs(rng.gauss(0, 1)))
                    for loss in curve_bins(final, amplitude=amplitude)
                )
                samples.append(Sample(f"s{i}", bins, final, i + run))
        return samples

    calibration = calibrate(draw(300))
    assert calibration.on, calibration.reason
    incumbent = 1.15
    judge = judge_of(calibration, incumbent)
    fresh = draw(4000)
    better = [s for s in fresh if s.final < incumbent]
    stopped = sum(1 for s in better if first_stop(judge, s.bins) is not None)
    assert len(better) > 500 and stopped / len(better) <= 2 * TARGET_LOSS
    # And it earns its keep: most runs far behind are stopped.
    worse = [s for s in fresh if s.final > 1.4]
    assert sum(first_stop(judge, s.bins) is not None for s in worse) > 0.5 * len(worse)


def test_a_track_whose_curves_do_not_predict_the_end_is_off() -> None:
    """Half the runs sit far behind until their warm-down, by more than the finals spread:
    the curve before the end says nothing about it, so no bin is used."""
    rng = random.Random(5)
    history = []
    for s in range(60):
        quality = 1.0 + 0.005 * s
        behind = 1.0 if rng.random() < 0.5 else 0.0
        for run in range(2):
            noise = rng.gauss(0, 0.01)
            bins = tuple(
                loss + rng.gauss(0, 0.005) + (behind if k < BINS - 1 else 0.0)
                for k, loss in enumerate(curve_bins(quality, offset=noise))
            )
            history.append(Sample(f"s{s}", bins, quality + noise, completed_at=2 * s + run))
    calibration = calibrate(history)
    assert not calibration.on
    assert "do not predict" in calibration.reason


def test_too_few_curves_or_no_seed_noise_leave_it_off() -> None:
    history = track_history(bloomers=False)
    calibration = calibrate(history[: MIN_CURVES - 2])
    assert not calibration.on and "needs" in calibration.reason
    assert make_judge(calibration, 1.0, 1, random.Random(0)) is None
    # Every run its own source: nothing measures the seed noise a stop must allow for.
    lone = [
        Sample(f"{s.sha256}-{i}", s.bins, s.final, s.completed_at) for i, s in enumerate(history)
    ]
    calibration = calibrate(lone)
    assert not calibration.on and "seed noise" in calibration.reason


def test_baselines_and_off_never_get_a_judge() -> None:
    config = parse_config({"experiment": {"early_stopping": "off"}})
    stopping = EarlyStopping()
    child = Candidate("LR = 2\n", parent_sha256="p" * 64, description="LR 1 → 2")
    baseline = Candidate("LR = 1\n", parent_sha256=None, description="baseline")
    assert stopping.curve_for(config.experiment, "cpu", child, None) is None
    assert parse_config({}).experiment.early_stopping == "off"  # the default
    auto = parse_config({"experiment": {"early_stopping": "auto"}}).experiment
    assert stopping.curve_for(auto, "cpu", baseline, None) is None
    assert stopping.curve_for(auto, "cpu", child, None) is not None


def test_config_rejects_an_unknown_mode() -> None:
    from autoresearchd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"experiment\.early_stopping.*\"auto\", \"off\""):
        parse_config({"experiment": {"early_stopping": "on"}})


def test_records_without_or_with_broken_curves_read_fine() -> None:
    record = make_result().to_record()
    del record["curve"], record["stopped_early"]
    assert Result.from_record(record).curve == ()
    record["curve"] = [[0.1, 2.0], "x", [2.0, 1.0], [0.2, None], [0.3], [0.4, 10**400], [0.5, 1.5]]
    record["stopped_early"] = "soon"
    result = Result.from_record(record)
    assert result.curve == ((0.1, 2.0), (0.5, 1.5))
    assert result.stopped_early is None
    again = Result.from_record(json.loads(json.dumps(result.to_record())))
    assert again == result


# -- a real run, stopped and recorded ----------------------------------------------------------

HOPELESS = curve_script(5.0, steps=40, sleep_s=6.0)
INCUMBENT = curve_script(1.0, steps=40, sleep_s=0.5)


def history_results(best_sha: str) -> list[Result]:
    """A calibrated track on the cpu tier; the incumbent's own runs are the best source."""
    results = []
    for sample in track_history(bloomers=False):
        sha = best_sha if sample.sha256 == "src0" else sample.sha256.ljust(64, "0")
        points = tuple(((k + 0.5) / BINS, loss) for k, loss in enumerate(sample.bins))
        results.append(
            make_result(
                track="synthetic",
                vram_tier="cpu",
                status=Status.DISCARD,
                # No hyperparameters: make_result's default source numbers its results in
                # the order tests make them, which the fit would read as one.
                train_py=f"# {sample.sha256}\n",
                train_py_sha256=sha,
                val_bpb=sample.final,
                curve=points,
                completed_at=1_700_000_000.0 + sample.completed_at,
            )
        )
    return results


@asynccontextmanager
async def calibrated_worker(tmp_path: Path) -> AsyncIterator[Worker]:
    workspace = write_workspace(tmp_path / "workspace", INCUMBENT)
    raw = {
        "daemon": {"state_dir": str(tmp_path / "state"), "agent": "tester"},
        "experiment": {
            "workspace": str(workspace),
            "sandbox": "off",
            "time_budget_s": 6.0,
            "grace_s": 5.0,
            "early_stopping": "auto",
        },
    }
    config = parse_config(raw, source=tmp_path / "config.toml")
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    async with open_memory(config) as memory:
        baseline = Candidate(INCUMBENT, parent_sha256=None, description="baseline")
        for result in history_results(baseline.sha256):
            await memory.publish(result)
        ctx = WorkerContext(
            config=config,
            memory=memory,
            outbox=outbox,
            publisher=Publisher(outbox, memory),
            gpus=Gpus(FakeNvml()),
        )
        calibration = await ctx.stopping.refresh(memory, config.experiment, "cpu", limit=500)
        assert calibration.on, calibration.reason
        worker = Worker(Device.cpu(0), ctx, rng=random.Random(7))
        worker.best.known = Best(
            track="synthetic",
            tier=None,
            val_bpb=1.0,
            train_py=INCUMBENT,
            train_py_sha256=baseline.sha256,
            result_id="r",
            agent_id="tester",
            updated_at=0.0,
        )
        # The audit draw must not let this run go on: one that never audits.
        ctx.stopping._rng = random.Random(0)
        yield worker


@pytest.mark.anyio
async def test_a_hopeless_subprocess_is_stopped_early_and_recorded(tmp_path: Path) -> None:
    async with calibrated_worker(tmp_path) as worker:
        parent = worker.best.known.train_py_sha256  # type: ignore[union-attr]
        candidate = Candidate(HOPELESS, parent_sha256=parent, description="x")
        result = await worker.run(candidate, stoppable=True)
        assert result is not None
        assert result.status is Status.DISCARD and result.val_bpb is None
        assert result.stopped_early is not None and result.stopped_early < 0.5
        assert "stopped early at" in result.error
        assert result.curve and result.duration_s < 4.0
        await worker.queue(result)
        # Through the outbox (every field type-checked) and the memory, as stored.
        assert [r.id for r in worker.ctx.outbox.pending()] == [result.id]
        await worker.ctx.memory.publish(result)
        stored = [r for r in await worker.ctx.memory.results("synthetic") if r.id == result.id]
        assert stored[0].stopped_early == result.stopped_early and stored[0].curve == result.curve
        table = results_table(stored, track="synthetic")
        assert "stopped_early" in table.splitlines()[1]
        status = worker.status(0.0)
        assert status.last_stopped_early == result.stopped_early
        assert status.early_stopping["on"] is True


@pytest.mark.anyio
async def test_replicates_and_baselines_run_to_the_end(tmp_path: Path) -> None:
    async with calibrated_worker(tmp_path) as worker:
        parent = worker.best.known.train_py_sha256  # type: ignore[union-attr]
        candidate = Candidate(HOPELESS, parent_sha256=parent, description="x")
        replicate = await worker.run(candidate)  # how replicates and re-measures run
        assert replicate is not None and replicate.stopped_early is None
        assert replicate.val_bpb is not None and len(replicate.curve) == BINS
        baseline = Candidate(HOPELESS, parent_sha256=None, description="baseline")
        first = await worker.run(baseline, stoppable=True)
        assert first is not None and first.stopped_early is None and first.val_bpb is not None


def test_status_shows_a_stopped_run_and_the_rule() -> None:
    device = {
        "index": 0,
        "uuid": "cpu-0",
        "state": "idle",
        "experiment": None,
        "last_val_bpb": 2.0,
        "last_stopped_early": 0.15,
        "early_stopping": {"on": True, "from_fraction": 0.1, "bins": 18, "curves": 60},
    }
    snapshot = {
        "version": "0",
        "pid": 1,
        "agent": "a",
        "track": "synthetic",
        "state": "running",
        "started_at": 0.0,
        "best_bpb": 1.0,
        "outbox_depth": 0,
        "memory": {"backend": "sqlite", "reachable": True},
        "devices": [device],
    }
    text = status_text(snapshot)
    assert "stopped_early 15%" in text
    assert "early stopping on from 10% of the budget (60 curves)" in text
    device["early_stopping"] = {"on": False, "curves": 3, "reason": "3 finished curves"}
    assert "early stopping off: 3 finished curves" in status_text(snapshot)
