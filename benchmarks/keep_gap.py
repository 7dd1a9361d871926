"""Keep gap: the time between a kept run's end and the next run's start, with speculation or not.

Setup: one worker (a CPU slot) in-process, against a solo memory behind a set round-trip
delay (``--delay-ms``, 100 ms by default: a hub some way off), with its publisher. A
stand-in train.py sleeps T seconds, logs its own start and end wall-clock times and scores
0.01 lower each run, so with ``replicates = 0`` every run is kept at once. After a keep
the candidate prepared during the run is stale (it came from the best the keep beat), so
without speculation the worker proposes and claims the next one between runs (memory reads,
a proposal, a claim); with speculation it runs the candidate proposed from the kept run and
claimed beside it. Both are measured in the same invocation, one after the other, each on
fresh state; the gaps after the baseline's run (its prefetch already builds on it) are left
out. Each gap includes the stand-in's own interpreter start-up, the same for both.

Beside the gaps, the memory calls per run in each mode, by method: what a speculation adds
to the load on a hub. With ``--verdict discard`` every run after the baseline scores above
it instead, so each speculation is dropped and released: the gap then is the one after a
discard, and the calls are a speculation's whole cost.

Printed last: ``keep_gap_ratio = median gap with speculation / median gap without`` (named
``discard_gap_ratio`` with ``--verdict discard``).
Usage: ``python benchmarks/keep_gap.py [--runs R] [--seconds T] [--delay-ms D]
[--verdict keep|discard]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio

from autoresearchd.config_loader import parse_config
from autoresearchd.gpus import Gpus
from autoresearchd.logs import configure_logging
from autoresearchd.memory.protocol import BestChange, CollectiveMemory, PublishOutcome
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Best, Device, Note, Result
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.testing import PLAN_ENV
from autoresearchd.worker.context import WorkerContext
from autoresearchd.worker.loop import Worker

#: Every run scores 0.01 below the one before, so each is kept (``sign`` -1), or above the
#: baseline, so each is discarded (``sign`` 1).
STAND_IN = '''"""Stand-in train.py: sleeps, logs its start and end, scores below each run before."""
import os
import time

START = time.time()
LR = 0.01  # search: log 0.001..0.1
WIDTH = 64  # search: int 16..256
sleep_s = {sleep_s!r}  # lower case: a setting of the stand-in, not a hyperparameter
log = os.path.join(os.environ["{env}"], "runs.log")
done = len(open(log).read().splitlines()) if os.path.exists(log) else 0
time.sleep(sleep_s)
END = time.time()
with open(log, "a") as handle:
    handle.write(f"{{START}} {{END}}\\n")
print("---")
print(f"val_bpb: {{3.0 + {sign} * 0.01 * done:.6f}}")
'''


class DelayedMemory:
    """A memory whose every call first waits one round trip; it counts them by method."""

    def __init__(self, inner: CollectiveMemory, delay_s: float) -> None:
        self._inner, self._delay_s = inner, delay_s
        self.calls: Counter[str] = Counter()

    async def _trip(self, method: str) -> None:
        self.calls[method] += 1
        await anyio.sleep(self._delay_s)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def get_best(self, track: str, tier: str | None = None) -> Best | None:
        await self._trip("get_best")
        return await self._inner.get_best(track, tier)

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        await self._trip("claim")
        return await self._inner.claim(track, sha256, agent_id, ttl_s, description)

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        await self._trip("release")
        await self._inner.release(track, sha256, agent_id)

    async def publish(self, result: Result) -> PublishOutcome:
        await self._trip("publish")
        return await self._inner.publish(result)

    async def best_history(
        self, track: str, tier: str | None = None, limit: int | None = 100
    ) -> list[BestChange]:
        await self._trip("best_history")
        return await self._inner.best_history(track, tier, limit)

    async def results(self, track: str | None = None, limit: int | None = 100) -> list[Result]:
        await self._trip("results")
        return await self._inner.results(track, limit)

    async def was_run(self, track: str, sha256: str) -> bool:
        await self._trip("was_run")
        return await self._inner.was_run(track, sha256)

    async def put_note(self, kind: str, note: Note) -> bool:
        await self._trip("put_note")
        return await self._inner.put_note(kind, note)

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        await self._trip("notes")
        return await self._inner.notes(kind, limit)


def run_log(logs: Path) -> list[tuple[float, float]]:
    path = logs / "runs.log"
    if not path.exists():
        return []
    return [
        (float(a), float(b)) for a, b in (line.split() for line in path.read_text().splitlines())
    ]


async def measure(
    root: Path, runs: int, seconds: float, delay_s: float, speculate: bool, *, keep: bool = True
) -> tuple[list[float], Counter[str]]:
    """Serve one worker until ``runs`` runs are logged; the gaps after each run but the first
    (the baseline's), and the memory calls made by method."""
    workspace, logs = root / "workspace", root / "logs"
    workspace.mkdir()
    logs.mkdir()
    (workspace / "train.py").write_text(
        STAND_IN.format(sleep_s=seconds, env=PLAN_ENV, sign=-1 if keep else 1)
    )
    os.environ[PLAN_ENV] = str(logs)
    config = parse_config(
        {
            "daemon": {"state_dir": str(root / "state"), "agent": "bench"},
            "experiment": {
                "workspace": str(workspace),
                "sandbox": "off",  # the stand-in logs outside its run directory
                "time_budget_s": seconds + 10.0,
                "replicates": 0,
            },
        }
    )
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    delayed = DelayedMemory(SqliteMemory(root / "memory.sqlite"), delay_s)
    async with delayed as memory:
        ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
        worker = Worker(Device.cpu(0), ctx)
        worker.speculation.enabled = speculate

        async def drain_when_done() -> None:
            while True:
                await anyio.sleep(0.1)
                if len(run_log(logs)) >= runs:
                    break
            ctx.draining.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.publisher.serve)
            tg.start_soon(drain_when_done)
            await worker.serve()
            tg.cancel_scope.cancel()
    pairs = sorted(run_log(logs))[:runs]
    return [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(pairs)][1:], delayed.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per mode, the baseline's too")
    parser.add_argument("--seconds", type=float, default=1.0, help="T: each run's sleep")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="the memory's round trip")
    parser.add_argument("--verdict", choices=("keep", "discard"), default="keep")
    args = parser.parse_args()
    keep = args.verdict == "keep"
    configure_logging("console", "warning", sys.stderr)
    gaps: dict[bool, list[float]] = {}
    calls: dict[bool, Counter[str]] = {}
    for speculate in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            gaps[speculate], calls[speculate] = anyio.run(
                partial(measure, keep=keep),
                Path(tmp),
                args.runs,
                args.seconds,
                args.delay_ms / 1000,
                speculate,
            )
    print(
        f"runs per mode: {args.runs}  T: {args.seconds}s  memory round trip: {args.delay_ms} ms"
        f"  every run after the baseline: {'kept' if keep else 'discarded'}"
    )
    for speculate, label in ((False, "without speculation"), (True, "with speculation")):
        found = gaps[speculate]
        print(
            f"gap after a {args.verdict}, {label}: median {statistics.median(found) * 1000:.1f} ms"
            f"  max {max(found) * 1000:.1f} ms  (n={len(found)})"
        )
        made = calls[speculate]
        per_run = ", ".join(f"{m} {n / args.runs:.2f}" for m, n in sorted(made.items()))
        print(f"  memory calls per run: {sum(made.values()) / args.runs:.2f} ({per_run})")
    ratio = statistics.median(gaps[True]) / statistics.median(gaps[False])
    print(f"{args.verdict}_gap_ratio = {ratio:.2f}")


if __name__ == "__main__":
    main()
