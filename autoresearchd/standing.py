"""Agent standing: whether an agent's runs agree with other agents' runs of the same sources.

For each source several agents ran on one track and tier, each agent's fresh runs (a
claimant's first, selecting run left out) are compared with each other agent's: apart by
more than :data:`AGREEMENT` standard errors of the seed noise (pooled over each agent's own
runs of a source) from most of the others, the agent disagrees on that source, else it
agrees. One liar among several agents so costs the honest nothing; between two, a dispute
costs both. An agent with :data:`TRUSTED_AFTER` agreements and no disagreement is trusted;
any disagreement loses standing.

A pure rule over a history, shared by the daemon (:mod:`autoresearchd.worker.confirming`) and the
hub (:mod:`autoresearchd.hub.standing`), so both judge an agent alike.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from autoresearchd.models import Result, Status
from autoresearchd.promotion import pooled_noise

#: The proposer of a claim restated with other agents' confirmations: not a measurement.
RESTATED = "restated"
#: Fresh runs of one source by two agents agree within this many standard errors.
AGREEMENT = 4.0
#: Agreements an agent needs, with no disagreement, to be trusted.
TRUSTED_AFTER = 3


@dataclass(frozen=True, slots=True)
class Standing:
    """How an agent's runs compared with other agents' runs of the same sources."""

    agrees: int = 0
    disagrees: int = 0

    @property
    def lost(self) -> bool:
        return self.disagrees > 0

    @property
    def trusted(self) -> bool:
        return not self.lost and self.agrees >= TRUSTED_AFTER


class Measured(Protocol):
    """What standing reads of a run: a :class:`Result`, or a hub's index row as a :class:`Run`."""

    @property
    def id(self) -> str: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def track(self) -> str: ...
    @property
    def vram_tier(self) -> str: ...
    @property
    def train_py_sha256(self) -> str: ...
    @property
    def val_bpb(self) -> float | None: ...
    @property
    def status(self) -> Status: ...
    @property
    def proposer(self) -> str: ...
    @property
    def started_at(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Run:
    """A run as standing reads it, for callers that hold no full :class:`Result`."""

    id: str
    agent_id: str
    track: str
    vram_tier: str
    train_py_sha256: str
    val_bpb: float | None
    status: Status
    proposer: str
    started_at: float


def standing(history: Sequence[Measured]) -> dict[str, Standing]:
    """Each agent's standing from the history (see the module docstring)."""
    runs: dict[tuple[str, str, str], dict[str, list[Measured]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for r in history:
        value = r.val_bpb
        measured = r.status in (Status.KEEP, Status.DISCARD) and r.proposer != RESTATED
        if measured and value is not None and math.isfinite(value):
            runs[(r.track, r.vram_tier, r.train_py_sha256)][r.agent_id].append(r)
    groups = [g for g in runs.values() if len(g) >= 2]
    if not groups:
        return {}
    # Seed noise from each agent's own runs of a source: a liar's runs, off by far more
    # than noise from everyone else's, must not widen the yardstick they are judged by.
    noise = pooled_noise(
        [r.val_bpb or 0.0 for r in rs] for g in runs.values() for rs in g.values()
    ).sd
    agrees: dict[str, int] = defaultdict(int)
    disagrees: dict[str, int] = defaultdict(int)
    for by_agent in groups:
        first = min((r for rs in by_agent.values() for r in rs), key=lambda r: r.started_at)
        fresh = {
            agent: [r.val_bpb or 0.0 for r in rs if r.id != first.id]
            for agent, rs in by_agent.items()
        }
        for agent, own in fresh.items():
            rest = [values for other, values in fresh.items() if other != agent and values]
            if not own or not rest:
                continue
            apart = sum(_apart(own, values, noise) for values in rest)
            # Off from most of the others: one liar among them costs the honest nothing.
            if 2 * apart > len(rest):
                disagrees[agent] += 1
            else:
                agrees[agent] += 1
    return {a: Standing(agrees[a], disagrees[a]) for a in set(agrees) | set(disagrees)}


def _apart(own: Sequence[float], other: Sequence[float], noise: float) -> bool:
    """Whether two agents' runs of one source differ by more than :data:`AGREEMENT`
    standard errors."""
    se = noise * math.sqrt(1 / len(own) + 1 / len(other))
    return abs(statistics.fmean(own) - statistics.fmean(other)) > AGREEMENT * se


def flags(history: Sequence[Result]) -> dict[str, str]:
    """Why each agent that lost its standing is flagged, by agent."""
    return {
        agent: f"disputed: {s.disagrees} of its sources disagree with other agents' runs"
        for agent, s in standing(history).items()
        if s.lost
    }
