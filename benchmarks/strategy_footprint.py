"""Footprint of a search strategy: the daemon's resident memory with 8 workers proposing.

Setup: for each strategy, a fresh Python process runs the real daemon in-process with a
fake NVML showing 8 GPUs, on a stand-in train.py (``testing.ok_script``: hyperparameters
with declared spaces, a val_bpb from them, ``--sleep`` seconds per run) with
``[proposer] strategy`` set, for ``--seconds`` of wall time; the process samples its own
RSS every half second. Each process is fresh, so a strategy's imports (Optuna and numpy
for ``tpe``) count only for the strategy that needs them.

Printed per strategy: peak RSS, the runs finished, and whether Optuna was imported.
Last: ``peak RSS(tpe) / peak RSS(portfolio)``, against the goal that the default
(``portfolio``) stays at or below 80 MB.
Usage: ``python benchmarks/strategy_footprint.py [--seconds S] [--sleep T]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

STRATEGIES = ("portfolio", "perturb", "tpe")
DEVICES = 8
GOAL_MIB = 80 * 1000**2 / 1024**2  # 80 MB


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(root: Path, strategy: str, sleep_s: float) -> Path:
    from autoresearchd.testing import ok_script

    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text(ok_script(sleep_s))
    config = root / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "bench"\nstate_dir = "{root / "state"}"\nlog_format = "json"\n'
        'log_level = "warning"\n'
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = {sleep_s + 5}\n'
        'sandbox = "off"\n'
        f'[proposer]\nstrategy = "{strategy}"\n'
    )
    return config


async def drive(config: Path, seconds: float) -> tuple[float, int]:
    from autoresearchd.daemon import Daemon
    from autoresearchd.testing import FakeNvml

    daemon = Daemon(config, nvml=FakeNvml.with_gpus(DEVICES))
    peak = 0.0

    async def sample() -> None:
        nonlocal peak
        # Preparing the track's data comes first: time counts from the first runs on.
        while _runs(config) < DEVICES:
            await anyio.sleep(0.5)
            peak = max(peak, rss_mib())
        for _ in range(int(seconds * 2)):
            await anyio.sleep(0.5)
            peak = max(peak, rss_mib())
        daemon.drain("benchmark_done")

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        await daemon.serve()
    return peak, _runs(config)


def _runs(config: Path) -> int:
    """Runs started so far: each leaves a log in the state directory."""
    return sum(1 for _ in (config.parent / "state").rglob("*.log"))


def child(strategy: str, seconds: float, sleep_s: float) -> None:
    from autoresearchd.logs import configure_logging

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root, strategy, sleep_s)
        configure_logging("console", "warning", sys.stderr)
        peak, runs = anyio.run(drive, config, seconds)
    optuna = "optuna" in sys.modules
    print(json.dumps({"strategy": strategy, "peak": peak, "runs": runs, "optuna": optuna}))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time per strategy")
    parser.add_argument("--sleep", type=float, default=1.0, help="each run's sleep")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seconds, args.sleep)
        return
    peaks: dict[str, float] = {}
    for strategy in STRATEGIES:
        command = [sys.executable, __file__, "--child", strategy]
        command += ["--seconds", str(args.seconds), "--sleep", str(args.sleep)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        peaks[strategy] = found["peak"]
        print(
            f"{strategy:<10} peak RSS {found['peak']:6.1f} MiB with {DEVICES} workers, "
            f"{found['runs']} run logs, optuna imported: {found['optuna']}"
        )
    print(f"goal for the default (portfolio): <= {GOAL_MIB:.1f} MiB (80 MB)")
    print(f"peak RSS(tpe) / peak RSS(portfolio) = {peaks['tpe'] / peaks['portfolio']:.2f}")


if __name__ == "__main__":
    main()
