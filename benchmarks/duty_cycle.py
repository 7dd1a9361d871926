"""Duty cycle: how busy the daemon keeps each device, against the cost of a bare spawn.

Setup: the real daemon in-process, a fake NVML showing 8 GPUs, and a stand-in train
script that sleeps T seconds and logs its own start and end wall-clock times. We read
those logs to get, per device, the busy fraction and the gaps between one run's end
and the next run's start. In the same run we measure the cost of spawning the bare
stand-in (from just before the spawn to its first line) with no daemon around.

Printed last: ``overhead_ratio = median gap / median bare spawn``. Targets: ratio <= 2,
busy fraction >= 99% for T = 30 s. Usage: ``python benchmarks/duty_cycle.py [--seconds T]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from autoresearchd.daemon import Daemon
from autoresearchd.testing import PLAN_ENV, FakeNvml, timing_script

DEVICES = 8


def bare_spawn_seconds(workdir: Path, repeats: int) -> list[float]:
    """Spawn the stand-in (sleep 0) directly; time from spawn to its first line."""
    script = workdir / "bare.py"
    script.write_text(timing_script(0.0))
    env = {PLAN_ENV: str(workdir), "CUDA_VISIBLE_DEVICES": "bare", "PATH": "/usr/bin:/bin"}
    costs = []
    for _ in range(repeats):
        (workdir / "bare.log").unlink(missing_ok=True)
        before = time.time()
        subprocess.run(
            [sys.executable, str(script)], env=env, check=True, stdout=subprocess.DEVNULL
        )
        start = float((workdir / "bare.log").read_text().split()[0])
        costs.append(start - before)
    return costs


def write_config(root: Path, seconds: float) -> Path:
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text(timing_script(seconds))
    config = root / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "bench"\nstate_dir = "{root / "state"}"\nlog_format = "json"\n'
        'log_level = "warning"\n'
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = {seconds}\ngrace_s = 10.0\n'
        # The timing script logs outside its run directory, which the sandbox forbids.
        'sandbox = "off"\n'
    )
    return config


def device_runs(logs: Path) -> dict[str, list[tuple[float, float]]]:
    runs = {}
    for log in logs.glob("GPU-*.log"):
        pairs = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
        runs[log.stem] = sorted((start, end) for start, end in pairs)
    return runs


async def drive(config: Path, logs: Path, runs: int) -> None:
    daemon = Daemon(config, nvml=FakeNvml.with_gpus(DEVICES))

    async def stop_when_done() -> None:
        while True:
            await anyio.sleep(0.5)
            done = device_runs(logs)
            if len(done) == DEVICES and all(len(r) >= runs for r in done.values()):
                daemon.drain("benchmark_done")
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_done)
        await daemon.serve()


def summarise(runs: dict[str, list[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    gaps, busy = [], []
    for pairs in runs.values():
        gaps += [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(pairs)]
        span = pairs[-1][1] - pairs[0][0]
        busy.append(sum(end - start for start, end in pairs) / span)
    return gaps, busy


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="T: each run's sleep")
    parser.add_argument("--runs", type=int, default=3, help="runs per device")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = bare_spawn_seconds(root, repeats=20)
        logs = root / "logs"
        logs.mkdir()
        config = write_config(root, args.seconds)
        os.environ[PLAN_ENV] = str(logs)
        anyio.run(drive, config, logs, args.runs)
        gaps, busy = summarise(device_runs(logs))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"devices: {DEVICES}  T: {args.seconds}s  runs per device: {args.runs}")
    print(f"busy fraction: min {min(busy):.4f}  mean {statistics.fmean(busy):.4f}")
    print(
        f"gap between runs: median {statistics.median(gaps) * 1000:.1f} ms  "
        f"p99 {percentile(gaps, 0.99) * 1000:.1f} ms  (n={len(gaps)})"
    )
    print(f"bare spawn: median {statistics.median(bare) * 1000:.1f} ms")
    print(f"daemon peak RSS with {DEVICES} workers: {peak_mb:.1f} MiB")
    print(f"overhead_ratio = {statistics.median(gaps) / statistics.median(bare):.2f}")


if __name__ == "__main__":
    main()
