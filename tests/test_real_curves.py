"""benchmarks/real_curves.py, the early-stopping benchmark's real-training family: its curves
come from real runs, carry real seed noise, and hold late bloomers."""

from __future__ import annotations

import importlib.util
import math
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))  # it imports its sibling landscapes.py
    try:
        spec = importlib.util.spec_from_file_location("real_curves", BENCHMARKS / "real_curves.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        module.__dict__["CACHE"] = tmp_path_factory.mktemp("real-curves")
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def bin_means(row: list[float], steps: int) -> list[float]:
    per = steps // 20
    return [sum(row[k * per : (k + 1) * per]) / per for k in range(20)]


def test_a_run_is_a_real_training_curve_with_seed_noise(real: ModuleType) -> None:
    runs = real.runs(real.snap(real.BASELINE))
    assert runs.shape == (real.SEEDS, real.STEPS + 1)
    finals = [float(v) for v in runs[:, real.STEPS]]
    mean = sum(finals) / len(finals)
    sd = math.sqrt(sum((f - mean) ** 2 for f in finals) / (len(finals) - 1))
    assert 0.5 * real.SEED_SD < sd < 2 * real.SEED_SD  # the documented seed spread
    assert real.true_final(real.BASELINE) == pytest.approx(mean)
    for row in runs:
        bins = bin_means([float(v) for v in row[: real.STEPS]], real.STEPS)
        assert bins[-1] < 0.5 * bins[0]  # it learns
    # Cached in memory, and on disk for the next process, which reads the same runs back.
    assert real.runs(real.snap(real.BASELINE)) is runs
    assert len(list(real.CACHE.glob("*.npy"))) == 1
    real.runs.cache_clear()
    assert (real.runs(real.snap(real.BASELINE)) == runs).all()
    trace = real.run(real.BASELINE, random.Random(3))
    assert len(trace.points) == real.REPORTS and trace.final in finals
    assert trace.points[-1][0] == 1.0


def test_a_higher_learning_rate_alone_is_behind_mid_run_and_ends_ahead(real: ModuleType) -> None:
    """Its warm-down brings a high rate's gradient noise down at the end: a run that would be
    stopped on its mid-run loss alone ends clearly better."""
    low = {"lr": -2.0, "width": 7.0, "batch": 3.0, "weight_decay": -5.0, "warmdown": 0.7}
    high = {**low, "lr": -0.75}
    mid = {}
    for name, theta in (("low", low), ("high", high)):
        runs = real.runs(real.snap(theta))
        per_seed = [bin_means([float(v) for v in r[: real.STEPS]], real.STEPS) for r in runs]
        mid[name] = sum(b[9] for b in per_seed) / len(per_seed)
    assert mid["high"] > mid["low"] + 0.1
    assert real.true_final(high) < real.true_final(low) - 0.1


def test_draws_snap_to_the_grid_within_the_space(real: ModuleType) -> None:
    snapped = dict(
        real.snap({"lr": -0.61, "width": 9.0, "batch": 3.4, "weight_decay": -2.2, "warmdown": 0.05})
    )
    assert snapped == {
        "lr": -0.5,
        "width": 7.0,
        "batch": 3.0,
        "weight_decay": -2.0,
        "warmdown": 0.1,
    }


def test_the_benchmark_offers_the_real_family() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "early_stopping.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "real" in done.stdout.split("--family", 1)[1]
