"""Search efficiency: runs to reach the optimum, for the swarm and for the baselines.

Setup: a stand-in train.py whose val_bpb is computed at once from its hyperparameters by
:func:`objective` (documented there: multi-modal, seed noise of 0.003, a known optimum of
0.900, and an out-of-memory region that crashes). K workers (1, 4, 8), as one daemon
driving K devices, share one in-memory history and see each other's runs in flight, on a
simulated clock: a run takes 300 s (±10%), a crash 30 s. A worker proposes from the
current best (the lowest val_bpb seen) and skips any candidate that was run or is claimed
(the memory's ``was_run``). No subprocesses: the proposers are driven directly.

Strategies: ``tpe`` (ours), ``perturb`` (the daemon's local search) and ``random``
(uniform over the declared spaces). A run reaches the target when its noise-free value
is within 1% of the optimum. Printed per strategy and K: the median runs to target over
the seeds, the duplicate runs, the parallel efficiency (``T(1) / (K·T(K))`` on the
simulated clock, i.e. GPU-hours at K=1 over GPU-hours at K) with a 90% bootstrap interval
over the seeds, then the cost of one TPE proposal with thousands of results in history,
and last ``runs_to_target(random) / runs_to_target(tpe)`` at K = 1.
Goals: that ratio >= 2, 8-worker efficiency of tpe >= 75%, zero duplicates.
Takes about six minutes on 2 cores with the default 200 seeds.
Usage: ``python benchmarks/search.py [--seeds N] [--jobs J]``.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import anyio

from autoresearchd.models import Candidate, Result, Status, sha256_text
from autoresearchd.mutation import Param, Value, apply_changes, describe, parse_params
from autoresearchd.proposers import PerturbProposer, ProposalContext, Proposer
from autoresearchd.search import TpeProposer

STAND_IN = '''\
"""Benchmark stand-in: val_bpb comes from the hyperparameters (benchmarks/search.py)."""

MATRIX_LR = 0.003  # search: log 0.0005..0.3
EMBED_LR = 0.05  # search: log 0.01..3.0
WEIGHT_DECAY = 0.5  # search: log 0.001..1.0
WARMUP_FRAC = 0.3  # search: float 0.0..0.5
DEPTH = 4  # search: int 2..16
DEVICE_BATCH = 2**3  # search: pow2 2..8
ACTIVATION = "relu"  # search: choice "relu" "gelu" "relu2" "swish"
'''
OPTIMUM = 0.9
TARGET = OPTIMUM * 1.01
NOISE = 0.003
#: DEPTH · DEVICE_BATCH above this runs out of memory, like a too-large batch on a real GPU.
MEMORY_LIMIT = 384
ACTIVATION_OFFSET = {"relu2": 0.0, "gelu": 0.003, "swish": 0.008, "relu": 0.02}
#: The best MATRIX_LR depends on the activation, so the landscape has several basins.
ACTIVATION_LR = {"relu2": 0.02, "gelu": 0.004, "swish": 0.08, "relu": 0.01}
RUN_S, CRASH_S = 300.0, 30.0
#: Runs after which a search counts as never reaching the target. TPE's proposals cost more
#: as its history grows, and 300 runs is past its 75th percentile, so its median is unmoved;
#: random search needs about 350 runs at the median, so it gets more room.
MAX_RUNS = {"tpe": 300, "perturb": 1000, "random": 1000}
WORKERS = (1, 4, 8)
STRATEGIES = ("tpe", "perturb", "random")
HISTORY_SIZES = (1000, 3000)
SHARED_IN_FLIGHT = True
#: Resamples behind the efficiency's interval.
BOOTSTRAP = 2000


def objective(values: Mapping[str, Value]) -> float | None:
    """The noise-free val_bpb, or None for an out-of-memory crash.

    ``0.9 + offset(ACTIVATION) + 0.03·a² + 0.008·(1 - cos 3πa) + 0.01·b² + 0.004·c²
    + 0.03·(w - 0.1)² + 0.0002·(DEPTH - 10)² + 0.001·(log2 DEVICE_BATCH - 5)²`` with
    ``a = log10(MATRIX_LR / best_lr(ACTIVATION))``, ``b = log10(EMBED_LR / 0.3)``,
    ``c = log10(WEIGHT_DECAY / 0.05)``, ``w = WARMUP_FRAC``. Each activation has its own
    best learning rate and offset, and the cosine ripple adds local minima two thirds of a
    decade apart on the learning-rate axis: several basins. The optimum, 0.900, is at relu2,
    MATRIX_LR 0.02, EMBED_LR 0.3, WEIGHT_DECAY 0.05, WARMUP_FRAC 0.1, DEPTH 10, DEVICE_BATCH
    2**5. About 0.2% of uniform samples are within 1% of it; runs with
    ``DEPTH · DEVICE_BATCH > 384`` crash, so DEPTH 12 and above at 2**5 do.
    """
    act = str(values["ACTIVATION"])
    depth, batch = int(values["DEPTH"]), int(values["DEVICE_BATCH"])  # type: ignore[call-overload]
    if depth * batch > MEMORY_LIMIT:
        return None
    a = math.log10(float(values["MATRIX_LR"]) / ACTIVATION_LR[act])  # type: ignore[arg-type]
    b = math.log10(float(values["EMBED_LR"]) / 0.3)  # type: ignore[arg-type]
    c = math.log10(float(values["WEIGHT_DECAY"]) / 0.05)  # type: ignore[arg-type]
    w = float(values["WARMUP_FRAC"])  # type: ignore[arg-type]
    return (
        OPTIMUM
        + ACTIVATION_OFFSET[act]
        + 0.03 * a * a
        + 0.008 * (1 - math.cos(3 * math.pi * a))
        + 0.01 * b * b
        + 0.004 * c * c
        + 0.03 * (w - 0.1) ** 2
        + 0.0002 * (depth - 10) ** 2
        + 0.001 * (math.log2(batch) - 5) ** 2
    )


class RandomProposer:
    """Uniform random search over the declared spaces (log-uniform for ``log``)."""

    name = "random"
    uses_history = False

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    async def propose(
        self, parent: Candidate, is_known: Callable[[str], object], context: object = None
    ) -> Candidate | None:
        params = parse_params(parent.source)
        for _ in range(50):
            changes = {n: self.sample(p) for n, p in params.items() if p.space.kind != "fixed"}
            source = apply_changes(parent.source, changes)
            digest = sha256_text(source)
            if not await is_known(digest):  # type: ignore[misc]
                return Candidate(source, parent.sha256, describe(params, changes), "random")
        return None

    def sample(self, param: Param) -> Value:
        space, rng = param.space, self._rng
        low, high = space.low or 0.0, space.high or 0.0
        if space.kind == "log":
            return float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}")
        if space.kind == "float":
            return float(f"{rng.uniform(low, high):.3g}")
        if space.kind == "int":
            return rng.randint(int(low), int(high))
        if space.kind == "pow2":
            return 2 ** rng.randint(int(low), int(high))
        return rng.choice(space.choices)


def make(strategy: str, rng: random.Random) -> Proposer:
    if strategy == "tpe":
        return TpeProposer(rng, STAND_IN)
    if strategy == "perturb":
        return PerturbProposer(rng=rng, baseline=STAND_IN)
    return RandomProposer(rng)  # type: ignore[return-value]


# --- the simulated swarm ----------------------------------------------------------------


@dataclass
class Swarm:
    """The shared memory of one simulation: results (newest last), claims and the best."""

    seed: int
    results: list[Result] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)
    running: dict[str, str] = field(default_factory=dict)
    best: Candidate = field(default_factory=lambda: Candidate(STAND_IN, None, "baseline"))
    best_bpb: float = math.inf
    duplicates: int = 0

    async def is_known(self, sha256: str) -> bool:
        return sha256 in self.started or sha256 in self.claimed

    def start(self, candidate: Candidate) -> None:
        if candidate.sha256 in self.started:
            self.duplicates += 1
        self.started.add(candidate.sha256)
        self.claimed.add(candidate.sha256)
        if SHARED_IN_FLIGHT:
            self.running[candidate.sha256] = candidate.source

    def finish(self, candidate: Candidate, true_bpb: float | None, now: float) -> Result:
        self.claimed.discard(candidate.sha256)
        self.running.pop(candidate.sha256, None)
        noise = random.Random(hash((self.seed, len(self.results)))).gauss(0, NOISE)
        val = None if true_bpb is None else true_bpb + noise
        status = Status.CRASH if val is None else Status.DISCARD
        if val is not None and val < self.best_bpb - 0.001:
            self.best, self.best_bpb, status = candidate, val, Status.KEEP
        result = _result(len(self.results), candidate, status, val, now)
        self.results.append(result)
        return result


def _result(n: int, candidate: Candidate, status: Status, val: float | None, now: float) -> Result:
    return Result(
        id=f"run-{n}",
        agent_id="bench",
        track="bench",
        status=status,
        val_bpb=val,
        description=candidate.description,
        train_py=candidate.source,
        train_py_sha256=candidate.sha256,
        parent_sha256=candidate.parent_sha256,
        seed=n,
        device_name="sim",
        device_uuid="sim",
        memory_gb=16.0,
        vram_tier="small",
        started_at=now,
        completed_at=now,
        duration_s=0.0,
        proposer=candidate.proposer,
    )


@dataclass(frozen=True)
class Outcome:
    strategy: str
    workers: int
    seed: int
    runs: int  # runs completed when the target was first reached (its cap + 1: never)
    seconds: float
    duplicates: int


async def simulate(strategy: str, workers: int, seed: int) -> Outcome:
    swarm = Swarm(seed)
    proposers = [make(strategy, random.Random(seed * 1000 + k)) for k in range(workers)]
    running: list[tuple[float, int, Candidate]] = []
    for k in range(workers):
        await _launch(swarm, proposers[k], k, 0.0, running, seed)
    done, cap = 0, MAX_RUNS[strategy]
    while running and done < cap:
        now, k, candidate = heapq.heappop(running)
        true_bpb = _true(candidate)
        swarm.finish(candidate, true_bpb, now)
        done += 1
        if true_bpb is not None and true_bpb <= TARGET:
            return Outcome(strategy, workers, seed, done, now, swarm.duplicates)
        await _launch(swarm, proposers[k], k, now, running, seed)
    return Outcome(strategy, workers, seed, cap + 1, math.inf, swarm.duplicates)


async def _launch(
    swarm: Swarm,
    proposer: Proposer,
    k: int,
    now: float,
    running: list[tuple[float, int, Candidate]],
    seed: int,
) -> None:
    # One daemon driving K devices: its workers share the history and the in-flight runs.
    context = ProposalContext()
    if proposer.uses_history:
        context = ProposalContext(
            results=swarm.results[::-1], in_flight=list(swarm.running.values())
        )
    candidate = await proposer.propose(swarm.best, swarm.is_known, context)
    if candidate is None:
        return
    swarm.start(candidate)
    jitter = random.Random(hash((seed, k, now))).uniform(0.9, 1.1)
    duration = (RUN_S if _true(candidate) is not None else CRASH_S) * jitter
    heapq.heappush(running, (now + duration, k, candidate))


_VALUES: dict[str, float | None] = {}


def _true(candidate: Candidate) -> float | None:
    if candidate.sha256 not in _VALUES:
        params = parse_params(candidate.source)
        _VALUES[candidate.sha256] = objective({n: p.value for n, p in params.items()})
    return _VALUES[candidate.sha256]


def run_one(job: tuple[str, int, int]) -> Outcome:
    return anyio.run(simulate, *job)


# --- proposal cost with a long history ---------------------------------------------------


def history_cost(size: int) -> tuple[float, float]:
    """Seconds for one TPE proposal with ``size`` results in history: cold, then warm cache."""
    rng = random.Random(size)
    swarm = Swarm(0)
    sampler = RandomProposer(rng)
    for n in range(size):
        candidate = anyio.run(sampler.propose, swarm.best, swarm.is_known)
        assert candidate is not None
        swarm.start(candidate)
        swarm.finish(candidate, _true(candidate), float(n))
    proposer = TpeProposer(random.Random(1), STAND_IN)
    context = ProposalContext(results=swarm.results[::-1])
    costs = []
    for _ in range(2):
        start = time.perf_counter()
        anyio.run(proposer.propose, swarm.best, swarm.is_known, context)
        costs.append(time.perf_counter() - start)
    return costs[0], costs[1]


# --- report ------------------------------------------------------------------------------


def summarize(outcomes: list[Outcome], seeds: int) -> float:
    by: dict[tuple[str, int], list[Outcome]] = {}
    for outcome in outcomes:
        by.setdefault((outcome.strategy, outcome.workers), []).append(outcome)
    print(f"target: noise-free val_bpb <= {TARGET:.4f} (optimum {OPTIMUM}), {seeds} seeds")
    print(
        f"{'strategy':<9} {'K':>2} {'runs(median)':>13} {'hours(median)':>14} "
        f"{'dups':>5} {'efficiency':>11} {'90% interval':>13} {'reached':>8}"
    )
    medians: dict[tuple[str, int], float] = {}
    for (strategy, workers), group in sorted(by.items()):
        runs = statistics.median(o.runs for o in group)
        hours = statistics.median(o.seconds for o in group) / 3600
        medians[(strategy, workers)] = runs
        single = [o.seconds for o in by[(strategy, 1)]]
        efficiency = _efficiency(single, [o.seconds for o in group], workers)
        interval = "-"  # K=1 is the baseline itself
        if workers > 1:
            low, high = _interval(single, [o.seconds for o in group], workers)
            interval = f"{low:.0%}..{high:.0%}"
        reached = sum(o.runs <= MAX_RUNS[strategy] for o in group)
        dups = sum(o.duplicates for o in group)
        print(
            f"{strategy:<9} {workers:>2} {runs:>13.1f} {hours:>14.1f} {dups:>5} "
            f"{efficiency:>10.0%} {interval:>13} {reached:>5}/{len(group)}"
        )
    return medians[("random", 1)] / medians[("tpe", 1)]


def _efficiency(single: list[float], parallel: list[float], workers: int) -> float:
    """``T(1) / (K·T(K))`` on the median GPU time to target; 0 when K never got there."""
    hours = statistics.median(parallel)
    return statistics.median(single) / (workers * hours) if math.isfinite(hours) else 0.0


def _interval(single: list[float], parallel: list[float], workers: int) -> tuple[float, float]:
    """A 90% bootstrap interval for the efficiency, resampling the seeds of both runs.

    Runs to target are heavy-tailed (a search caught in a wrong basin takes hundreds of
    runs), so the median moves a lot between seed sets; the interval says how far.
    """
    rng = random.Random(0)
    samples = sorted(
        _efficiency(
            rng.choices(single, k=len(single)), rng.choices(parallel, k=len(parallel)), workers
        )
        for _ in range(BOOTSTRAP)
    )
    return samples[BOOTSTRAP // 20], samples[BOOTSTRAP - 1 - BOOTSTRAP // 20]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Runs to target are heavy-tailed: fewer seeds leave the efficiency ±10 points.
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    jobs = [(s, k, seed) for s in STRATEGIES for k in WORKERS for seed in range(args.seeds)]
    # Longest first, so the pool's last job is not a slow one.
    jobs.sort(key=lambda job: (job[0] != "tpe", -job[1]))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(run_one, jobs))
    ratio = summarize(outcomes, args.seeds)
    for size in HISTORY_SIZES:
        cold, warm = history_cost(size)
        print(
            f"tpe proposal with {size} results in history: {cold * 1000:.0f} ms cold, "
            f"{warm * 1000:.0f} ms warm"
        )
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    print(f"runs_to_target(random) / runs_to_target(tpe) = {ratio:.2f}")


if __name__ == "__main__":
    main()
