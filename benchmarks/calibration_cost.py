"""The early-stopping calibration's cost: one :func:`~autoresearchd.calibration.calibrate` on a
realistic stored history, now against the code before it was made cheaper, as a ratio.

The daemon recalibrates a track in a thread about once a minute; pure Python holds the GIL
all the while, so the event loop waits on it between runs. The history: :data:`RUNS` finished
runs of a search over :data:`DIMS` numeric hyperparameters (as many as ``train.py`` has), each
candidate its incumbent with one or two of them moved or, one time in three, a fresh draw,
one source in ten run three times (the seed noise the calibration needs). A run's curve falls
toward its final, and a hyperparameter hides part of the final until the end (a warm-down
tied to the budget), so the fits read the hyperparameters and the calibration is on, as it
is on a track it judges.

The code before is the calibration and ridge modules at :data:`BEFORE` (read with ``git
show``, so this needs the repository's history), run in the same process in alternating
rounds with the current one (each one's best round counts: interference only slows a round
down). Both must agree: the same bins used, and per bin and stored run the same predicted
final and lowest final, to :data:`TOLERANCE`; the benchmark fails otherwise.

Usage: ``python benchmarks/calibration_cost.py [--rounds 5] [--shapes history]`` (shapes
as ``benchmarks/early_stopping.py --compare-shapes`` takes them; the daemon's by default).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from autoresearchd import calibration
from autoresearchd.curves import BINS, Sample

ROOT = Path(__file__).resolve().parent.parent
#: The commit whose calibration is the baseline: the last before the calibration was made
#: cheaper.
BEFORE = "4346b6eb909335c876b102534e234bcdfe6c9165"
RUNS = 300
DIMS = 20
TOLERANCE = 1e-9


def history(seed: int, runs: int = RUNS, dims: int = DIMS) -> list[Sample]:
    """A search's finished runs (see the module docstring)."""
    rng = random.Random(seed)
    names = [f"P{j:02d}" for j in range(dims)]
    weights = [rng.gauss(0.0, 0.03) for _ in names]
    incumbent = [rng.uniform(0.3, 0.7) for _ in names]
    samples: list[Sample] = []
    source = 0
    while len(samples) < runs:
        if rng.random() < 1 / 3:
            theta = [rng.uniform(0.0, 1.0) for _ in names]
        else:
            theta = list(incumbent)
            for j in rng.sample(range(dims), rng.choice((1, 2))):
                theta[j] = min(1.0, max(0.0, theta[j] + rng.gauss(0.0, 0.15)))
        quality = 1.0 + sum(w * (t - 0.5) ** 2 for w, t in zip(weights, theta, strict=True))
        quality += rng.uniform(0.0, 0.1)
        hot = theta[0]  # sits high mid-run, ends low
        for _ in range(3 if source % 10 == 0 else 1):
            offset = rng.gauss(0.0, 0.004)
            bins = tuple(
                quality
                + offset
                + 0.8 * (1 - (k + 0.5) / BINS) ** 2
                + 0.1 * hot * math.sin(math.pi * (k + 0.5) / BINS)
                + rng.gauss(0.0, 0.003)
                for k in range(BINS)
            )
            final = quality - 0.05 * hot + offset
            samples.append(
                Sample(
                    f"s{source}", bins, final, len(samples), tuple(zip(names, theta, strict=True))
                )
            )
        if final < quality - 0.05 * incumbent[0]:
            incumbent = theta
        source += 1
    return samples[:runs]


def before() -> ModuleType:
    """The calibration module at :data:`BEFORE`, reading the ridge module of that commit."""
    modules = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("ridge", "calibration"):
            text = subprocess.run(
                ["git", "show", f"{BEFORE}:autoresearchd/{name}.py"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            path = Path(folder) / f"before_{name}.py"
            path.write_text(text)
            spec = importlib.util.spec_from_file_location(f"before_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # its dataclasses look their module up there
            spec.loader.exec_module(module)
            modules[name] = module
    setattr(modules["calibration"], "ridge", modules["ridge"])  # noqa: B010 (mypy: untyped)
    return modules["calibration"]


def bounds(result: Any, samples: Sequence[Sample]) -> dict[int, list[tuple[float, float] | None]]:
    """Per used bin, each stored run's predicted and lowest final."""
    return {
        k: [result.bound(s.bins, k, s.params) for s in samples]
        for k, line in enumerate(result.lines)
        if line is not None and result.on
    }


def disagreement(old: Any, new: Any, samples: Sequence[Sample]) -> float:
    """The largest difference between the two calibrations' bounds (inf: other bins)."""
    a, b = bounds(old, samples), bounds(new, samples)
    if a.keys() != b.keys() or old.on != new.on:
        return math.inf
    worst = abs(old.z - new.z) if old.on else 0.0
    for k, values in a.items():
        for x, y in zip(values, b[k], strict=True):
            if (x is None) != (y is None):
                return math.inf
            if x is not None and y is not None:
                worst = max(worst, abs(x[0] - y[0]), abs(x[1] - y[1]))
    return worst


def best_times(runs: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """Each callable's best time over ``rounds`` alternating rounds."""
    best = [math.inf] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="histories timed, one after another")
    parser.add_argument(
        "--shapes",
        default=",".join(calibration.SHAPES) or "none",
        help="the fits' terms (comma-separated: square, product, history; none)",
    )
    args = parser.parse_args()
    shapes = tuple(w for w in args.shapes.split(",") if w and w != "none")
    old = before()
    ratios = []
    for seed in range(args.seeds):
        samples = history(seed)
        then = old.calibrate(samples, shapes)
        now = calibration.calibrate(samples, shapes)
        gap = disagreement(then, now, samples)
        if not gap <= TOLERANCE:
            raise SystemExit(f"seed {seed}: the calibrations disagree by {gap:g}")
        runs = [
            functools.partial(module.calibrate, samples, shapes) for module in (old, calibration)
        ]
        t_old, t_new = best_times(runs, args.rounds)
        ratios.append(t_old / t_new)
        print(
            f"seed {seed}: {len(samples)} runs, {DIMS} hyperparameters, shapes "
            f"{','.join(shapes) or 'none'}, on {now.on} ({now.describe()['bins']} bins): "
            f"before {t_old * 1000:.0f} ms, now {t_new * 1000:.0f} ms, "
            f"before / now {t_old / t_new:.2f}x (bounds agree within {gap:.1e})"
        )
    print(f"calibrate: before / now {min(ratios):.2f}x..{max(ratios):.2f}x over {args.seeds} seeds")


if __name__ == "__main__":
    main()
