"""Corner bias of the portfolio proposer's broad phase, on the reference train.py.

The first proposal of a fresh track is broad (``PortfolioProposer.broad``). It must spread
out from what is known without pushing every coordinate to the edge of its space: on CPU
the top levels of CPU_DEPTH, CPU_WIDTH and CPU_BATCH_SIZE together make a run too slow to
finish its budget. For many seeds this asks the real proposer (declared spaces, device
``cpu``) for its first proposal after the baseline, with the baseline the only result,
then ``--steps`` proposals in a row with each one in flight (parallel workers at the start
of a track), and counts how often each CPU shape parameter lands on its top level, and all
three at once. The baseline is a uniform draw through the same ``Axis`` encoding, measured
in the same run. Printed: the odds and ``odds(proposer) / odds(uniform)`` (1: no bias).
Usage: ``python benchmarks/broad_corners.py [--seeds N] [--steps N]``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import anyio
from simulated import simulated_run  # a sibling script of this one

from autoresearchd.hyperparams import movable, parse_params
from autoresearchd.models import Candidate, Status
from autoresearchd.proposers.base import ProposalContext
from autoresearchd.proposers.portfolio import Axis, PortfolioProposer

TRAIN_PY = Path(__file__).resolve().parent.parent / "train.py"
SHAPES = ("CPU_DEPTH", "CPU_WIDTH", "CPU_BATCH_SIZE")


def at_top(values: dict[str, object], axes: dict[str, Axis]) -> dict[str, bool]:
    return {n: values[n] == axes[n].decode(1.0) for n in SHAPES}


async def proposer_draws(source: str, seed: int, steps: int) -> list[dict[str, object]]:
    """The proposer's first ``steps`` proposals from the baseline, each one then in flight."""
    proposer = PortfolioProposer(random.Random(seed), source)
    parent = Candidate(source=source, parent_sha256=None, description="baseline")
    running: list[str] = []
    drawn = []

    async def is_known(sha256: str) -> bool:
        return False

    for _ in range(steps):
        context = ProposalContext(
            results=[simulated_run(0, source, Status.KEEP, 2.0)], in_flight=running, device="cpu"
        )
        found = await proposer.propose(parent, is_known, context)
        assert found is not None
        running = [*running, found.source]
        params = parse_params(found.source)
        drawn.append({n: params[n].value for n in SHAPES})
    return drawn


def odds(draws: list[dict[str, object]], axes: dict[str, Axis]) -> list[float]:
    tops = [at_top(d, axes) for d in draws]
    each = [sum(t[n] for t in tops) / len(tops) for n in SHAPES]
    return [*each, sum(all(t.values()) for t in tops) / len(tops)]


def _ratio(odds: float, uniform: float) -> str:
    # With few seeds a uniform draw may never hit all three tops: no baseline to divide by.
    return f"{odds / uniform:.2f}x" if uniform else "no uniform hit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4, help="proposals in a row per seed")
    args = parser.parse_args()
    source = TRAIN_PY.read_text()
    params = movable(parse_params(source), "cpu")
    axes = {n: Axis(params[n]) for n in SHAPES}
    rng = random.Random(1)
    uniform = [
        {n: axes[n].decode(axes[n].uniform(rng)) for n in SHAPES} for _ in range(args.seeds * 4)
    ]
    base = odds(uniform, axes)
    first: list[dict[str, object]] = []
    later: list[dict[str, object]] = []
    for seed in range(args.seeds):
        drawn = anyio.run(proposer_draws, source, seed, args.steps)
        first.append(drawn[0])
        later.extend(drawn[1:])
    print(f"{len(params)} movable parameters on cpu, {args.seeds} seeds")
    print("| draws | " + " | ".join(SHAPES) + " | all three |")
    print("|---|" + "---|" * (len(SHAPES) + 1))
    print("| uniform | " + " | ".join(f"{p:.3f}" for p in base) + " |")
    for label, draws in [("first", first), (f"proposals 2..{args.steps}", later)]:
        measured = odds(draws, axes)
        cells = [f"{p:.3f} ({_ratio(p, b)})" for p, b in zip(measured, base, strict=True)]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
