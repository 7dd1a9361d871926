"""benchmarks/early_stopping.py's powerlaw family: the landscape has the properties it claims,
and the benchmark runs it through the daemon's rule at a tiny size."""

from __future__ import annotations

import importlib.util
import math
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "benchmarks" / "early_stopping.py"


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # its dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A benchmark script run as a user runs it, from the repository's root."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def curves() -> ModuleType:
    return load("powerlaw_curves", ROOT / "benchmarks" / "powerlaw_curves.py")


def configurations(curves: ModuleType, n: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{k: rng.uniform(lo, hi) for k, (lo, hi) in curves.SPACE.items()} for _ in range(n)]


def bloomer_pairs(curves: ModuleType) -> list[tuple[dict[str, float], dict[str, float], float]]:
    """Pairs (a, b) of configurations that never crash where a's noise-free curve is above b's
    at half the budget by more than 0.02 and below it at the end by more than 0.02, with the
    smaller of the two margins."""
    thetas = [t for t in configurations(curves, 300, 1) if curves.shape(t).crash_probability == 0]
    shapes = [curves.shape(t).curve() for t in thetas]
    pairs = []
    for a, curve_a in zip(thetas, shapes, strict=True):
        for b, curve_b in zip(thetas, shapes, strict=True):
            margin = min(curve_a[49] - curve_b[49], curve_b[-1] - curve_a[-1])
            if margin > 0.02:
                pairs.append((a, b, margin))
    return pairs


def test_late_bloomers_exist_and_a_higher_learning_rate_alone_makes_some(
    curves: ModuleType,
) -> None:
    """Some configurations sit clearly worse at half the budget and end clearly better; among
    them, a configuration with only its learning rate raised, which no seed crashes."""
    assert len(bloomer_pairs(curves)) > 100
    raised = 0
    for theta in configurations(curves, 1000, 5):
        hot = {**theta, "lr": theta["lr"] + 0.5}
        if hot["lr"] > -1.0 or curves.shape(hot).crash_probability > 0:
            continue
        cold_curve, hot_curve = curves.shape(theta).curve(), curves.shape(hot).curve()
        raised += hot_curve[49] > cold_curve[49] + 0.02 and hot_curve[-1] < cold_curve[-1] - 0.02
    assert raised >= 1


def test_a_noisy_run_behind_at_half_its_budget_can_end_ahead(curves: ModuleType) -> None:
    hot, cold, margin = max(bloomer_pairs(curves), key=lambda pair: pair[2])
    assert margin > 0.1
    rng = random.Random(2)
    hot_runs = [curves.run(hot, rng) for _ in range(20)]
    cold_runs = [curves.run(cold, rng) for _ in range(20)]
    assert all(r.final is not None for r in hot_runs + cold_runs)
    # Behind at half the budget on every seed, ahead at the end on every seed.
    assert min(r.points[49][1] for r in hot_runs) > max(r.points[49][1] for r in cold_runs)
    assert max(r.final for r in hot_runs) < min(r.final for r in cold_runs)


def test_crashes_happen_only_above_a_learning_rate(curves: ModuleType) -> None:
    rng = random.Random(3)
    crashed: dict[float, int] = {}
    for lr in (-3.5, -3.0, -2.5, -2.0, -1.5, -1.0):
        theta = {**curves.BASELINE, "lr": lr}
        runs = [curves.run(theta, rng) for _ in range(40)]
        crashed[lr] = sum(r.final is None for r in runs)
        ratio = curves.shape(theta).ratio
        if ratio <= curves.MAY_DIVERGE:
            assert crashed[lr] == 0 and all(len(r.points) == curves.REPORTS for r in runs)
        if ratio > curves.ALWAYS_DIVERGES:
            assert crashed[lr] == 40 and curves.true_final(theta) == math.inf
            # A crash ends the run early, after its loss climbs above the curve.
            assert all(len(r.points) < curves.REPORTS for r in runs)
    assert crashed[-3.5] == 0 and crashed[-1.0] == 40
    assert list(crashed.values()) == sorted(crashed.values())


def test_the_schedule_is_train_pys(curves: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    train = load("reference_train_schedule", ROOT / "train.py")
    for warmup, warmdown, final_lr in ((0.02, 0.4, 0.05), (0.005, 0.9, 0.5), (0.2, 0.05, 0.01)):
        monkeypatch.setattr(train, "WARMUP_FRAC", warmup)
        monkeypatch.setattr(train, "WARMDOWN_FRAC", warmdown)
        monkeypatch.setattr(train, "FINAL_LR_FRAC", final_lr)
        for i in range(101):
            u = i / 100
            expected = train.lr_multiplier(u)
            assert curves.schedule(u, warmup, warmdown, final_lr) == pytest.approx(expected)


def test_reports_and_seed_spread_are_as_documented(curves: ModuleType) -> None:
    rng = random.Random(4)
    runs = [curves.run(curves.BASELINE, rng) for _ in range(200)]
    assert [f for f, _ in runs[0].points] == [(i + 1) / 100 for i in range(100)]
    spread = statistics.stdev(r.final for r in runs)
    assert 0.5 * curves.SEED_SD < spread < 2 * curves.SEED_SD
    # The true final is the noise-free curve's end; seeds scatter around it.
    truth = curves.true_final(curves.BASELINE)
    assert abs(statistics.fmean(r.final for r in runs) - truth) < 0.002


@pytest.mark.timeout(120)
def test_the_benchmark_runs_the_powerlaw_family_through_the_rule() -> None:
    # Enough runs for the calibration to come on (100 finished curves) and stop some.
    tiny = (
        *("--family", "powerlaw", "--seeds", "2", "--candidates", "250"),
        *("--compare-curve-only", "--compare-shapes", "square,product"),
    )
    done = run_script(BENCHMARK, *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    off = re.search(r"\[powerlaw\]  off: (\d+) runs, (\d+) stopped early", done.stdout)
    auto = re.search(r"\[powerlaw\] auto: (\d+) runs, (\d+) stopped early", done.stdout)
    assert off is not None and auto is not None
    assert int(off[2]) == 0 and int(auto[2]) > 0  # the rule judged these curves and stopped some
    # The rule reading the curve alone ran beside it, on the same candidates.
    curve = re.search(r"\[powerlaw\] curve: (\d+) runs, (\d+) stopped early", done.stdout)
    assert curve is not None and int(curve[2]) > 0
    assert re.search(r"true improvements lost by curve: \d+ of \d+ offered", done.stdout)
    assert re.search(r"off / curve over off / auto \d+\.\d\d \(90% CI", done.stdout)
    # So did a candidate rule reading nonlinear hyperparameter terms.
    assert "arm sh1: the rule with hyperparameter terms square, product" in done.stdout
    shaped = re.search(r"\[powerlaw\]  sh1: (\d+) runs, (\d+) stopped early", done.stdout)
    assert shaped is not None and int(shaped[2]) > 0
    assert re.search(r"off / sh1 over off / auto \d+\.\d\d \(90% CI", done.stdout)
    assert re.search(
        r"\[powerlaw\] true improvements lost: \d+ of \d+ offered .*90% CI", done.stdout
    )
    assert re.search(r"off / auto \d+\.\d\dx \(90% CI \d+\.\d\d\.\.\d+\.\d\d", done.stdout)
    assert re.search(r"\[powerlaw\] bound: an oracle .* off / oracle \d+\.\d\dx", done.stdout)
    assert re.search(r"\[powerlaw\] stops by quarter of the budget: (\d+%, ){3}\d+%", done.stdout)
    assert lines[-1].startswith("worst family: GPU-hours per real improvement off / auto")
    assert "(powerlaw, goal 1.5x)" in lines[-1] and "scaling" not in done.stdout
