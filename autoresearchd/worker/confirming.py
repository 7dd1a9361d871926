"""Independent confirmation: a daemon reruns other agents' claims, as BOINC's quorum does.

A *claim* is another agent's ``keep`` on this worker's track and tier that would move the
best the memory holds and is not that best yet. A hub under ``replication = "other-agent"``
moves the best to a claim only on other agents' confirmations, so daemons spend a share of
their runs making them:

- **Share.** Before each candidate a worker reruns a claim instead, with probability 0 when
  no claim can use a confirmation, ``confirm_share`` when every waiting claim has its
  ``confirmations``, and toward ``confirm_share_max`` while ``k`` claims lack them
  (``1 - 2**-k`` of the way there): unconfirmed claims are worked off quickly.
- **Choice.** The claim with the fewest confirmations by others; a claim by an agent that
  lost its standing (below) first, one by a trusted agent last. A claim is confirmed at most
  ``max_confirmations`` times, and no more once ``confirmations`` of them or more show it
  does not beat the best (their mean is no better).
- **A confirmation** is the claim's own source, if this daemon's trust policy accepts it,
  run with a fresh seed and published as a provisional ``discard`` whose ``confirms`` names
  the claim. A daemon never confirms its own agent's claims.
- **Follow-up.** Once other agents' confirmations of one of this agent's claims number
  ``confirmations`` and their mean beats the best, the claim is *restated*: a copy of its
  keep with a new id, the same seed (so a hub counts that run once), proposer
  :data:`RESTATED`, and as ``confirmed_bpb`` the confirmations' mean, which is the figure a
  hub accepts. Publishing it is what moves the best; it is restated again as more
  confirmations arrive, until the hub finds the claim significant or the best moves on.
- **Standing** (:func:`autoresearchd.standing.standing`), beyond BOINC's adaptive
  replication: for each source several agents ran on one track and tier, each agent's fresh
  runs are compared with each other agent's (a claimant's first, selecting run left out):
  apart by more than :data:`AGREEMENT` standard errors of the seed noise (pooled over each
  agent's own runs of a source) from most of the others, the agent disagrees on that source,
  else it agrees. One liar among several agents so costs the honest nothing; between two, a
  dispute costs both. An agent with :data:`TRUSTED_AFTER` agreements and no disagreement is
  trusted: its claims need one confirmation fewer (here, and on a hub:
  :mod:`autoresearchd.hub.standing`), so they draw a smaller share. Any disagreement loses
  standing: its claims are confirmed first, and ``best --history`` flags them.

Solo mode (the embedded memory) holds one agent's results only, so nothing here runs there.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog

from autoresearchd.config import Config, ExperimentConfig
from autoresearchd.errors import MemoryBackendError
from autoresearchd.judging import best_from, delta_vs_best
from autoresearchd.models import Best, Candidate, Device, Result, Status
from autoresearchd.parents import Parents
from autoresearchd.records import new_run_id
from autoresearchd.standing import RESTATED, Standing, standing
from autoresearchd.worker.best import BestView
from autoresearchd.worker.context import WorkerContext, baseline
from autoresearchd.worker.modes import DeviceControl


class Worker(Protocol):
    """The worker a confirmation runs on, as this module uses it. A protocol, not the
    worker class itself, so that the worker can own a :class:`Confirming` without an
    import circle (``docs/architecture.md``, the layering)."""

    current: Candidate | None

    @property
    def config(self) -> Config: ...
    @property
    def ctx(self) -> WorkerContext: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def device(self) -> Device: ...
    @property
    def parents(self) -> Parents: ...
    @property
    def best(self) -> BestView: ...
    @property
    def control(self) -> DeviceControl: ...
    async def run(self, candidate: Candidate, *, stoppable: bool = False) -> Result | None: ...
    async def queue(self, result: Result) -> None: ...


log = structlog.get_logger(__name__)

#: The proposer of a confirmation run, and of a claim restated with its confirmations.
CONFIRM = "confirm"
#: How often at most a worker reads the history for claims (a hub's whole results list):
#: a run is minutes long, so this only spares a memory an idle worker's reads.
CHECK_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class Claim:
    """Another agent's keep awaiting confirmation, and the confirmations it has."""

    keep: Result
    confirmations: tuple[float, ...]

    @property
    def sha256(self) -> str:
        return self.keep.train_py_sha256


def counts(result: Result) -> bool:
    """Whether ``result`` is a run a hub counts toward replication (a keep, or a
    provisional discard, with a finite val_bpb); a restatement is no run."""
    value = result.val_bpb
    scored = value is not None and math.isfinite(value)
    kind = result.status is Status.KEEP or (result.status is Status.DISCARD and result.provisional)
    return scored and kind and result.proposer != RESTATED


def others_runs(history: Iterable[Result], keep: Result) -> tuple[float, ...]:
    """The runs of ``keep``'s source on its track by agents other than its own, one per
    seed, as a hub counts them."""
    by_seed: dict[int, float] = {}
    for r in history:
        if (
            r.train_py_sha256 == keep.train_py_sha256
            and r.track == keep.track
            and r.agent_id != keep.agent_id
            and counts(r)
            and r.val_bpb is not None
        ):
            by_seed.setdefault(r.seed, r.val_bpb)
    return tuple(by_seed.values())


def claims(
    history: Sequence[Result],
    agent: str,
    track: str,
    tier: str,
    best: Best | None,
    limit: int,
    refute_after: int = 1,
) -> list[Claim]:
    """Other agents' keeps on ``track`` and ``tier`` that would move ``best`` and may use
    another confirmation: fewer than ``limit`` so far, and not refuted (``refute_after``
    confirmations or more whose mean is no better than the best)."""
    found: dict[str, Claim] = {}
    for keep in history:
        value = keep.best_bpb
        if (
            keep.status is not Status.KEEP
            or keep.proposer == RESTATED
            or keep.agent_id == agent
            or keep.track != track
            or keep.vram_tier != tier
            or value is None
            or not math.isfinite(value)
            or keep.train_py_sha256 in found
        ):
            continue
        if best is not None and (
            keep.train_py_sha256 == best.train_py_sha256
            or (math.isfinite(best.val_bpb) and not value < best.val_bpb)
        ):
            continue
        runs = others_runs(history, keep)
        if len(runs) >= limit:
            continue
        if len(runs) >= refute_after and best is not None and math.isfinite(best.val_bpb):
            if not statistics.fmean(runs) < best.val_bpb:
                continue  # refuted: other agents' runs show no gain over the best
        found[keep.train_py_sha256] = Claim(keep, runs)
    return list(found.values())


def needed(claim: Claim, experiment: ExperimentConfig, standings: dict[str, Standing]) -> int:
    """Confirmations ``claim`` needs before it stops counting as unconfirmed here."""
    trusted = standings.get(claim.keep.agent_id, Standing()).trusted
    return max(1, experiment.confirmations - trusted)


def share(
    waiting: Sequence[Claim], experiment: ExperimentConfig, standings: dict[str, Standing]
) -> float:
    """The chance that a worker's next run is a confirmation (see the module docstring)."""
    if not waiting:
        return 0.0
    short = sum(len(c.confirmations) < needed(c, experiment, standings) for c in waiting)
    low, high = (
        experiment.confirm_share,
        max(experiment.confirm_share, experiment.confirm_share_max),
    )
    return low + (high - low) * (1 - 0.5**short)


def choose(waiting: Sequence[Claim], standings: dict[str, Standing]) -> Claim:
    """The claim to confirm next: a disputed agent's first, a trusted one's last, then the
    fewest confirmations, then the oldest."""

    def order(claim: Claim) -> tuple[int, int, float]:
        agent = standings.get(claim.keep.agent_id, Standing())
        rank = 0 if agent.lost else 2 if agent.trusted else 1
        return (rank, len(claim.confirmations), claim.keep.completed_at)

    return min(waiting, key=order)


def restatement(keep: Result, runs: Sequence[float], now: float) -> Result:
    """``keep`` restated with other agents' confirmations ``runs`` (see the module docstring)."""
    mean = statistics.fmean(runs)
    return keep.with_(
        id=new_run_id(keep.agent_id),
        proposer=RESTATED,
        confirmed_bpb=mean,
        provisional=False,
        confirms=keep.id,
        completed_at=now,
        metrics={**keep.metrics, "confirmations": float(len(runs))},
    )


class Confirming:
    """One worker's part in confirmation: its turns at others' claims, and the follow-up
    of its own agent's claims."""

    def __init__(self, worker: Worker, rng: random.Random | None = None) -> None:
        self.worker = worker
        self.rng = rng or worker.rng
        self._checked = -math.inf
        self._restated: dict[str, int] = {}

    async def turn(self) -> bool:
        """Maybe run one confirmation instead of a candidate; True when one ran."""
        w = self.worker
        if w.config.memory.backend == "sqlite" or time.monotonic() - self._checked < (
            CHECK_INTERVAL_S
        ):
            return False
        self._checked = time.monotonic()
        track, agent, tier = w.config.experiment.track, w.config.daemon.agent, w.device.tier
        try:
            history = await w.ctx.memory.results(track, limit=None)
            await w.best.read()
        except MemoryBackendError as exc:
            log.warning("confirmation_check_failed", error=str(exc))
            return False
        best = w.best.known
        await self.follow_up(history, best)
        experiment = w.config.experiment
        waiting = claims(
            history,
            agent,
            track,
            tier,
            best,
            experiment.max_confirmations,
            refute_after=experiment.confirmations,
        )
        waiting = [c for c in waiting if not w.ctx.ledger.in_flight(c.sha256)]
        standings = standing(history)
        chance = share(waiting, experiment, standings)
        if not waiting or self.rng.random() >= chance:
            return False
        self._checked = -math.inf  # after a confirmation, look again at once
        return await self.confirm(choose(waiting, standings), best)

    async def confirm(self, claim: Claim, best: Best | None) -> bool:
        """Rerun ``claim``'s source with a fresh seed and queue it as its confirmation."""
        w, keep = self.worker, claim.keep
        parent, _ = w.parents.choose(best_from(keep), baseline(w.config), w.config.experiment.trust)
        if parent.sha256 != keep.train_py_sha256:
            log.info("confirmation_refused", claim=keep.id, reason="trust policy")
            return False
        if w.control.paused:
            return True  # paused while it looked: the next step holds, and nothing is stopped
        candidate = Candidate(
            source=keep.train_py,
            parent_sha256=keep.parent_sha256,
            description=f"confirmation of {keep.agent_id}'s {keep.description}",
            proposer=CONFIRM,
        )
        log.info(
            "confirmation_started",
            claim=keep.id,
            agent=keep.agent_id,
            sha=keep.train_py_sha256[:12],
        )
        # Shown as the worker's experiment, and finished (not stopped) by ``finish``.
        w.current = candidate
        try:
            with w.ctx.ledger.running(candidate):
                result = await w.run(candidate)
        finally:
            w.current = None
        if result is None:
            return True
        if result.status is Status.DISCARD:
            delta = delta_vs_best(result.val_bpb, best)
            result = result.with_(provisional=True, delta_vs_best=delta)
        await w.queue(result.with_(confirms=keep.id))
        return True

    async def follow_up(self, history: Sequence[Result], best: Best | None) -> None:
        """Restate this agent's claims that other agents' confirmations now carry."""
        w = self.worker
        agent, experiment = w.config.daemon.agent, w.config.experiment
        standings = standing(history)  # a trusted agent's claims need one confirmation fewer
        for keep in history:
            if keep.agent_id != agent or keep.status is not Status.KEEP or not counts(keep):
                continue
            if best is not None and keep.train_py_sha256 == best.train_py_sha256:
                continue
            runs = others_runs(history, keep)
            done = max(
                [self._restated.get(keep.train_py_sha256, 0)]
                + [
                    int(r.metrics.get("confirmations", 0))
                    for r in history
                    if r.proposer == RESTATED and r.confirms == keep.id
                ]
            )
            if len(runs) < needed(Claim(keep, runs), experiment, standings) or len(runs) <= done:
                continue
            mean = statistics.fmean(runs)
            if best is not None and math.isfinite(best.val_bpb) and not mean < best.val_bpb:
                continue
            self._restated[keep.train_py_sha256] = len(runs)
            restated = restatement(keep, runs, time.time())
            log.info("claim_restated", claim=keep.id, confirmations=len(runs), mean=mean)
            with anyio.CancelScope(shield=True):  # a result half-handled is a result lost
                await anyio.to_thread.run_sync(w.ctx.outbox.put, restated)
            w.ctx.publisher.notify()
