"""Training share: the fraction of a device's wall time spent training, with and without standbys.

Setup: the real daemon in-process (one CPU worker, or one fake GPU for the GPU-like profile)
runs a stand-in train.py whose start-up, training and evaluation are set sleeps, and which
prints ``training_seconds``. Two variants run one after the other in the same invocation:

- ``standby``: the stand-in calls ``wait_for_go()`` after its start-up, so the daemon
  starts each next run early (this is the behaviour under test);
- ``today``: the same stand-in without the call, so every run starts from scratch once the
  previous one has ended (the behaviour before standbys: the honest baseline).

With ``--verdict keep`` every run scores below the one before it and is kept at once
(``replicates = 0``), so each next run is the speculation made beside the run before it
(:mod:`autoresearchd.worker.speculating`), not the candidate prepared from the best. A third
variant then runs between the two: ``one``, standbys of the prepared candidate only (the
behaviour before the speculation got a standby of its own on a GPU), and the ratio printed
last is ``standby / one``.

Share = the training seconds of runs 2..n over the wall time from the end of run 1 to the
end of run n (the first run starts cold in both variants). Profiles: ``cpu`` (2 s start-up,
1 s evaluation) and ``gpu`` (30 s start-up, 1 s evaluation). ``--scale`` shrinks every set
time (budget, start-up, evaluation) by one factor, so a 300 s budget can be measured in
minutes; the interpreter's own start-up is not scaled, which only makes the figure harder.

Printed last: ``share_ratio = standby share / today share`` (``spare_ratio = standby share /
one share`` with ``--verdict keep``); the goals are shares of at least
97% at a 300 s budget and 92% at 20 s (CPU profile).
Usage: ``python benchmarks/training_share.py [--profile cpu|gpu] [--budget S] [--runs N]
[--scale F] [--verdict discard|keep] [--only standby|one|today]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from autoresearchd.daemon import Daemon
from autoresearchd.logs import configure_logging
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Result
from autoresearchd.testing import FakeNvml
from autoresearchd.worker.running import Running

PROFILES = {"cpu": (2.0, 1.0), "gpu": (30.0, 1.0)}

STAND_IN = '''"""Stand-in train.py: set start-up, training and evaluation times."""
import os
import sys
import time
LR = 0.01  # search: log 0.001..0.1
time.sleep({startup_s!r})  # imports, data, the device's context
{wait}
start = time.perf_counter()
time.sleep({budget_s!r})  # training
trained = time.perf_counter() - start
time.sleep({eval_s!r})  # evaluation
print("---")
print(f"val_bpb: {{{score}:.6f}}")
print(f"training_seconds: {{trained:.4f}}")
sys.stdout.flush()
os._exit(0)  # as the reference train.py ends: no interpreter teardown
'''
WAIT = "from autoresearchd.harness.go import wait_for_go\nwait_for_go()"
#: Every run discards: the baseline is the best.
DISCARD = "3.0 + abs(LR - 0.01)"
#: Every run is kept: its score falls by 0.001 a second of wall time (at least a second
#: apart, each run is below the one before by the default minimum improvement).
KEEP = "3.0 - (time.time() - {t0!r}) * 1e-3"


@dataclass(frozen=True)
class Share:
    """One variant's steady-state figures."""

    runs: int
    training_s: float
    wall_s: float

    @property
    def fraction(self) -> float:
        return self.training_s / self.wall_s if self.wall_s > 0 else math.nan


def stand_in(
    startup_s: float, budget_s: float, eval_s: float, *, standby: bool, keep: bool = False
) -> str:
    wait = WAIT if standby else "pass  # no go signal: started only when the device is free"
    score = KEEP.format(t0=time.time()) if keep else DISCARD
    return STAND_IN.format(
        startup_s=startup_s, budget_s=budget_s, eval_s=eval_s, wait=wait, score=score
    )


def write_config(root: Path, script: str, budget_s: float, *, gpu: bool, data_dir: str) -> Path:
    workspace = root / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "train.py").write_text(script)
    devices = "" if gpu else '[devices]\ngpus = "none"\ncpu_workers = 1\n'
    data = f'data_dir = "{data_dir}"\n' if data_dir else ""
    config = root / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "bench"\nstate_dir = "{root / "state"}"\nlog_format = "json"\n'
        'log_level = "warning"\non_shutdown = "stop"\n'
        f"{devices}"
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = {budget_s}\n'
        f"grace_s = {max(60.0, budget_s)}\nreplicates = 0\n{data}"
    )
    return config


async def drive(config: Path, runs: int, *, gpu: bool) -> list[Result]:
    """Run the daemon until its worker has queued ``runs`` results; those results."""
    daemon = Daemon(config, nvml=FakeNvml.with_gpus(1) if gpu else None)

    async def stop_when_done() -> None:
        while True:
            await anyio.sleep(0.2)
            if sum(w.results_queued for w in daemon.workers) >= runs:
                daemon.drain("benchmark_done")
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_done)
        await daemon.serve()
    state = config.parent / "state"
    async with SqliteMemory(state / "memory.sqlite") as memory:
        results = await memory.results(limit=None)
    return sorted((r for r in results if r.duration_s > 0), key=lambda r: r.completed_at)


def steady_share(results: list[Result]) -> Share:
    """Training of runs 2..n over the wall time from run 1's end to run n's."""
    later = results[1:]
    training = sum(r.metrics.get("training_seconds", 0.0) for r in later)
    wall = results[-1].completed_at - results[0].completed_at if later else 0.0
    return Share(len(later), training, wall)


def measure(
    script: str, budget_s: float, runs: int, *, gpu: bool, data_dir: str = ""
) -> tuple[Share, list[Result]]:
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(Path(tmp), script, budget_s, gpu=gpu, data_dir=data_dir)
        results = anyio.run(lambda: drive(config, runs, gpu=gpu))
    return steady_share(results), results


def per_run_shares(results: list[Result]) -> list[float]:
    """Each of runs 2..n: its training seconds over the wall time since the previous run ended."""
    return [
        b.metrics.get("training_seconds", 0.0) / (b.completed_at - a.completed_at)
        for a, b in itertools.pairwise(results)
        if b.completed_at > a.completed_at
    ]


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """``min / median / max`` of ``values``, each times ``scale``."""
    if not values:
        return "-"
    shown = (min(values), statistics.median(values), max(values))
    return " / ".join(f"{v * scale:.{digits}f}" for v in shown)


def breakdown(results: list[Result]) -> list[str]:
    """Where each of runs 2..n spent the wall time since the previous run ended: the daemon's
    gap (one run's end to the next's go), the start-up it waited for, the script's own time
    beyond training (warm-up, evaluation) and the rest of the run ("other": a warm-up after
    go, the steps' printing, the summary, the process's exit, the runner's reading of it)."""
    lines = []
    for a, b in itertools.pairwise(results):
        m = b.metrics
        wall = b.completed_at - a.completed_at
        gap = b.started_at - a.completed_at
        startup = m.get("startup_seconds", 0.0)
        training = m.get("training_seconds", 0.0)
        warmup, evaluation = m.get("warmup_seconds", 0.0), m.get("eval_seconds", 0.0)
        # Holds the warm-up too where it ran after go (not train.py's on a CPU, done before).
        other = b.duration_s - startup - training - evaluation
        lines.append(
            f"  wall {wall:6.2f} s = gap {gap:5.2f} + run {b.duration_s:6.2f}: standby up"
            f" {m.get('standby_seconds', 0.0):5.2f} before go, start-up waited"
            f" {startup:4.2f}, warm-up {warmup:4.2f}, training {training:6.2f},"
            f" eval {evaluation:4.2f}, other {other:4.2f}"
            + (f"; {m['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in m else "")
        )
    return lines


def report(name: str, share: Share, results: list[Result]) -> None:
    startups = [r.metrics.get("startup_seconds") for r in results[1:]]
    shown = ", ".join("-" if s is None else f"{s:.2f}" for s in startups)
    gaps = [b.started_at - a.completed_at for a, b in itertools.pairwise(results)]
    gap = statistics.median(gaps) * 1000 if gaps else math.nan
    print(
        f"{name:<8} share {share.fraction * 100:6.2f}%  training {share.training_s:8.2f} s"
        f" of {share.wall_s:8.2f} s over {share.runs} runs  (startup_seconds: {shown};"
        f" median gap {gap:.0f} ms)"
    )
    print(f"         per run: share min / median / max {spread(per_run_shares(results), 100)} %")
    for line in breakdown(results):
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--budget", type=float, default=20.0, help="training seconds per run")
    parser.add_argument("--runs", type=int, default=4, help="runs per variant (>= 2)")
    parser.add_argument("--scale", type=float, default=1.0, help="factor on every set time")
    parser.add_argument("--verdict", choices=("discard", "keep"), default="discard")
    parser.add_argument("--only", choices=("standby", "one", "today"), default=None)
    args = parser.parse_args()
    keep = args.verdict == "keep"
    startup, evaluation = PROFILES[args.profile]
    times = (startup * args.scale, args.budget * args.scale, evaluation * args.scale)
    gpu = args.profile == "gpu"
    configure_logging("console", "warning", sys.stderr)
    print(
        f"profile {args.profile}: start-up {times[0]:g} s, budget {times[1]:g} s, "
        f"evaluation {times[2]:g} s (scale {args.scale:g} of a {args.budget:g} s budget), "
        f"{args.runs} runs per variant, every run {'kept' if keep else 'discarded'}"
    )
    shares: dict[str, Share] = {}
    for name in ("standby", "one", "today") if keep else ("standby", "today"):
        if args.only not in (None, name):
            continue
        script = stand_in(*times, standby=name != "today", keep=keep)
        Running.spare_standby = name != "one"
        try:
            shares[name], results = measure(script, times[1], args.runs, gpu=gpu)
        finally:
            Running.spare_standby = True
        report(name, shares[name], results)
    ideal = times[1] / (times[1] + times[2])
    print(f"ceiling (evaluation only, no start-up or gap): {ideal * 100:.2f}%")
    if "standby" in shares and "today" in shares:
        ratio = shares["standby"].fraction / shares["today"].fraction
        print(f"share_ratio = {ratio:.3f}")
    if "standby" in shares and "one" in shares:
        ratio = shares["standby"].fraction / shares["one"].fraction
        print(f"spare_ratio = {ratio:.3f}")


if __name__ == "__main__":
    main()
