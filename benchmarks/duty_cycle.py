"""Duty cycle: how busy the daemon keeps each device, against the cost of a bare spawn.

Setup: the real daemon in-process, a fake NVML showing 8 GPUs, and a stand-in train
script that waits for its go signal (so the daemon starts it as a standby), sleeps T
seconds and logs its own start (at go) and end wall-clock times. We read those logs to get,
per device, the busy fraction and the gaps between one run's end and the next run's start.
In the same run we measure the cost of spawning the bare stand-in with no daemon around:
the wall time of a whole run of it with T = 0, since without standbys a gap also spans one
process's exit and the next one's start-up. That lone spawn is the honest baseline; the
cost of N stand-ins started at once is printed too, for reference.

Printed last: ``overhead_ratio = median gap / median lone bare spawn``. Targets: ratio
<= 1.5, busy fraction >= 99% for T = 30 s.
Usage: ``python benchmarks/duty_cycle.py [--seconds T] [--runs R] [--devices N]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import anyio

from autoresearchd.daemon import Daemon
from autoresearchd.logs import configure_logging
from autoresearchd.testing import PLAN_ENV, FakeNvml, timing_script

DEFAULT_DEVICES = 8
#: Placed before the timing stand-in's clock starts: the run's time begins at go. It speaks
#: the go protocol itself (``autoresearchd.harness.go``), as a script may, because importing
#: the harness would add most of a second to every lone spawn and flatter the ratio.
WAITS_FOR_GO = """\
def wait_for_go():
    fd = os.environ.pop("AUTORESEARCH_GO_FD", "")
    if fd.isdigit():
        os.write(int(fd), b"R")
        if os.read(int(fd), 1) != b"G":
            os._exit(0)
        os.close(int(fd))
wait_for_go()
"""


def stand_in(seconds: float) -> str:
    """The timing stand-in, started early by the daemon and logging its start at go."""
    script = timing_script(seconds)
    clock = "START = time.time()\n"
    assert clock in script, "the timing stand-in no longer starts its clock as expected"
    return script.replace(clock, WAITS_FOR_GO + clock)


def bare_spawn_seconds(workdir: Path, repeats: int) -> list[float]:
    """Run the stand-in (sleep 0) directly, as the daemon would, and time each whole run."""
    script = workdir / "bare.py"
    script.write_text(timing_script(0.0))  # the stand-in as it was, started from scratch
    env = {**os.environ, PLAN_ENV: str(workdir), "CUDA_VISIBLE_DEVICES": "bare"}
    costs = []
    for _ in range(repeats):
        before = time.perf_counter()
        subprocess.run(
            [sys.executable, str(script)], env=env, check=True, stdout=subprocess.DEVNULL
        )
        costs.append(time.perf_counter() - before)
    return costs


def herd_spawn_seconds(workdir: Path, devices: int, repeats: int) -> list[float]:
    """Start ``devices`` bare stand-ins at the same instant, as devices whose runs end
    together must be restarted; each one's whole-run time is a sample."""
    script = workdir / "bare.py"
    env = {**os.environ, PLAN_ENV: str(workdir), "CUDA_VISIBLE_DEVICES": "bare"}
    costs: list[float] = []

    def one(barrier: threading.Barrier) -> None:
        barrier.wait()
        before = time.perf_counter()
        subprocess.run(
            [sys.executable, str(script)], env=env, check=True, stdout=subprocess.DEVNULL
        )
        costs.append(time.perf_counter() - before)

    for _ in range(repeats):
        barrier = threading.Barrier(devices)
        threads = [threading.Thread(target=one, args=(barrier,)) for _ in range(devices)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return costs


def rss_mib() -> float:
    """This process's resident memory now (not the high-water mark of start-up)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(root: Path, seconds: float) -> Path:
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text(stand_in(seconds))
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


async def drive(config: Path, logs: Path, runs: int, devices: int) -> float:
    """Run the daemon until every device has done ``runs`` runs; returns the peak RSS in MiB."""
    daemon = Daemon(config, nvml=FakeNvml.with_gpus(devices))
    peak = 0.0

    async def stop_when_done() -> None:
        nonlocal peak
        while True:
            await anyio.sleep(0.5)
            peak = max(peak, rss_mib())
            done = device_runs(logs)
            if len(done) == devices and all(len(r) >= runs for r in done.values()):
                daemon.drain("benchmark_done")
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_done)
        await daemon.serve()
    return peak


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
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES, help="fake GPUs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = bare_spawn_seconds(root, repeats=20)
        herd = herd_spawn_seconds(root, args.devices, repeats=5)
        logs = root / "logs"
        logs.mkdir()
        config = write_config(root, args.seconds)
        os.environ[PLAN_ENV] = str(logs)
        configure_logging("console", "warning", sys.stderr)
        peak_mb = anyio.run(drive, config, logs, args.runs, args.devices)
        gaps, busy = summarise(device_runs(logs))
    print(f"devices: {args.devices}  T: {args.seconds}s  runs per device: {args.runs}")
    print(f"busy fraction: min {min(busy):.4f}  mean {statistics.fmean(busy):.4f}")
    print(
        f"gap between runs: median {statistics.median(gaps) * 1000:.1f} ms  "
        f"p99 {percentile(gaps, 0.99) * 1000:.1f} ms  (n={len(gaps)})"
    )
    gap = statistics.median(gaps)
    print(
        f"bare spawn (a whole run of the stand-in with T = 0): median "
        f"{statistics.median(bare) * 1000:.1f} ms alone, "
        f"{statistics.median(herd) * 1000:.1f} ms with {args.devices} started at once"
    )
    print(f"daemon RSS with {args.devices} workers: peak {peak_mb:.1f} MiB while running")
    print(f"gap / {args.devices} simultaneous bare spawns = {gap / statistics.median(herd):.2f}")
    print(f"overhead_ratio = {gap / statistics.median(bare):.2f}")


if __name__ == "__main__":
    main()
