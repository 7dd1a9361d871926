"""The daemon's default proposer choosing a benchmark's candidates (``early_stopping.py``).

A landscape's configuration (a dict of floats over declared ranges) becomes a stand-in
train.py whose constants carry ``# search: float low..high`` annotations, so
:class:`~autoresearchd.proposers.portfolio.PortfolioProposer` reads the history exactly as it
reads a track's results: each run is a :class:`~autoresearchd.models.Result` holding its
source, its val_bpb (None for a crash or a stop) and, for a run stopped as hopeless, the
share of the budget it used (which the proposer leaves out of its history). ``ranked``
records each stopped run as a crash instead, so the proposer ranks it among the rest: the
reading it does not take, measured beside the one it takes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
from simulated import simulated_run  # a sibling script of this one

from autoresearchd.hyperparams import parse_params
from autoresearchd.models import Candidate, Result, Status
from autoresearchd.proposers.base import ProposalContext
from autoresearchd.proposers.portfolio import PortfolioProposer

Space = dict[str, tuple[float, float]]


def stand_in(theta: dict[str, float], space: Space) -> str:
    """A train.py holding ``theta`` as searchable constants (names upper-cased)."""
    lines = ['"""Benchmark stand-in: its curve comes from these constants."""', ""]
    for name, (low, high) in sorted(space.items()):
        lines.append(f"{name.upper()} = {theta[name]!r}  # search: float {low!r}..{high!r}")
    return "\n".join(lines) + "\n"


@dataclass
class PortfolioDraws:
    """One search's proposer and the history it reads, newest result last."""

    space: Space
    rng: random.Random
    ranked: bool = False
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        baseline = {name: low for name, (low, _) in self.space.items()}
        self.proposer = PortfolioProposer(self.rng, stand_in(baseline, self.space))

    def record(
        self, theta: dict[str, float], final: float | None, stopped_at: float | None
    ) -> None:
        """One finished run of ``theta``: its final val_bpb, or None with where it stopped."""
        source = stand_in(theta, self.space)
        crashed = final is None and (stopped_at is None or self.ranked)
        status = Status.CRASH if crashed else Status.DISCARD
        stopped = None if self.ranked else stopped_at
        n = len(self.results)
        self.results.append(simulated_run(n, source, status, final, stopped_early=stopped))

    def draw(self, best: dict[str, float]) -> dict[str, float]:
        """The proposer's next configuration from the incumbent ``best``."""
        parent = Candidate(source=stand_in(best, self.space), parent_sha256=None, description="")
        known = {r.train_py_sha256 for r in self.results}

        async def is_known(sha256: str) -> bool:
            return sha256 in known

        context = ProposalContext(results=self.results[::-1])
        found = anyio.run(self.proposer.propose, parent, is_known, context)
        if found is None:  # every proposal known: the incumbent's neighbourhood is spent
            return dict(best)
        params = parse_params(found.source)
        return {name: float(params[name.upper()].value) for name in self.space}  # type: ignore[arg-type]
