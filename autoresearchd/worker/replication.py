"""Judging a candidate's run, and replicating one that looks like an improvement.

Each result is judged against the best as it stands after the run, not as it stood when
the candidate was proposed: the best may have moved meanwhile. A candidate that beats the
best by ``min_improvement`` is provisional: it becomes a ``keep`` only when fresh
replicates with other seeds, against the incumbent's own runs, show an improvement the
track's noise does not explain (:mod:`autoresearchd.promotion` says what to run next: the
candidate again, or the incumbent when it has too few runs of its own).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Protocol

import structlog

from autoresearchd.errors import MemoryBackendError
from autoresearchd.judging import delta_vs_best, improves
from autoresearchd.models import Best, Candidate, Result, Status
from autoresearchd.parents import Parents
from autoresearchd.promotion import (
    Rule,
    Step,
    Trial,
    accepts,
    make_rule,
    measurements,
    new_trial,
    pooled_noise,
    settle,
)
from autoresearchd.worker.best import BestView
from autoresearchd.worker.context import Host, baseline

log = structlog.get_logger(__name__)

#: The proposer a re-measure of the incumbent records: a deliberate rerun, not a candidate.
REMEASURE = "remeasure"


class Judges(Host, Protocol):
    """The worker whose runs are judged, as this module uses it."""

    @property
    def best(self) -> BestView: ...
    @property
    def parents(self) -> Parents: ...
    async def run(self, candidate: Candidate, *, stoppable: bool = False) -> Result | None: ...
    async def run_judged(
        self, candidate: Candidate, *, alongside: bool = False, stoppable: bool = False
    ) -> tuple[Result | None, Best | None]: ...
    async def queue(self, result: Result) -> None: ...


class Replication:
    """Runs a candidate, judges it, and confirms an apparent improvement with replicates."""

    def __init__(self, host: Judges) -> None:
        self._host = host

    async def evaluate(self, candidate: Candidate) -> bool:
        """Run a candidate, and its replicates when it looks like an improvement; True
        when its run left a result."""
        host = self._host
        result, best = await host.run_judged(candidate, alongside=True, stoppable=True)
        if result is None:
            return False
        experiment = host.config.experiment
        if result.status is not Status.DISCARD or not improves(
            result.val_bpb, best, experiment.min_improvement
        ):
            await host.queue(result)
        elif self._first_ever(candidate, best) or experiment.replicates == 0:
            await host.queue(result.with_(status=Status.KEEP, confirmed_bpb=result.val_bpb))
        else:
            await self.replicate(candidate, result, best)
        return True

    def _first_ever(self, candidate: Candidate, best: Best | None) -> bool:
        """The memory said there is no best and this is the baseline: it sets the first best
        unreplicated. Mutations of it, run alongside by other workers, replicate as usual; so
        does any result when the best could not be read (unknown is not absent)."""
        return best is None and self._host.best.answered and candidate.parent_sha256 is None

    async def replicate(self, candidate: Candidate, first: Result, best: Best | None) -> None:
        """Confirm a provisional improvement with fresh replicates before calling it a keep.

        Each fresh replicate is queued provisional until the rule decides, then as keep
        or discard.
        """
        host = self._host
        await host.queue(first.with_(provisional=True))
        measured = await self.measured()
        noise = pooled_noise(runs.values() for runs in measured.values())
        remeasurable = best is not None and self._may_remeasure(best)
        trial = new_trial(first.val_bpb or math.inf, best, measured, remeasurable)
        rule = make_rule(host.config.experiment, noise)
        log.info("replication_planned", noise_sd=round(noise.sd, 6), noise_dof=noise.dof)
        replicates = _Replicates(host, candidate)
        step, trial = await settle(
            rule, trial, replicates.run, lambda: self.remeasure(best), host.ctx.draining.is_set
        )
        if replicates.last is None:
            return
        if step is None:  # stopped while the rule was undecided: the run is still a result
            await host.queue(replicates.last.with_(provisional=True))
        else:
            await self._conclude(replicates.last, trial, rule, step)

    async def _conclude(self, last: Result, trial: Trial, rule: Rule, step: Step) -> None:
        """Queue the last replicate as the keep the rule found, or as a plain discard."""
        value = rule.confirmed(trial)
        best = await self._host.best.read()
        if accepts(step, value, best):
            delta = delta_vs_best(value, best)
            await self._host.queue(
                last.with_(status=Status.KEEP, confirmed_bpb=value, delta_vs_best=delta)
            )
            return
        log.info(
            "replication_failed",
            mean_val_bpb=statistics.fmean(trial.fresh),
            runs=len(trial.fresh),
            incumbent_runs=len(trial.incumbent or ()),
        )
        await self._host.queue(last)

    async def measured(self) -> dict[str, dict[str, float]]:
        """Each source's runs on this track and tier: the history's and this daemon's own."""
        host = self._host
        track, tier = host.config.experiment.track, host.device.tier
        try:
            history = await host.ctx.memory.results(track, limit=host.config.proposer.max_history)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            history = []
        found = measurements(history, track, tier)
        for sha, runs in host.ctx.ledger.measured_on(tier).items():
            found.setdefault(sha, {}).update(runs)
        return found

    def _may_remeasure(self, best: Best) -> bool:
        """The incumbent's source may run here: trusted, and no other worker of ours runs it."""
        host = self._host
        if host.ctx.ledger.in_flight(best.train_py_sha256):
            return False
        root, trust = baseline(host.config), host.config.experiment.trust
        parent, _ = host.parents.choose(best, root, trust)
        return parent.sha256 == best.train_py_sha256

    async def remeasure(self, best: Best | None) -> float | None:
        """One more run of the incumbent's source, queued as a result of its own."""
        if best is None:
            return None
        incumbent = Candidate(
            source=best.train_py,
            parent_sha256=None,
            description=f"re-measure of the best {best.train_py_sha256[:12]}",
            proposer=REMEASURE,
        )
        log.info("remeasure_started", sha=incumbent.sha256[:12])
        with self._host.ctx.ledger.running(incumbent):
            result = await self._host.run(incumbent)
        if result is None:
            return None
        await self._host.queue(result.with_(delta_vs_best=delta_vs_best(result.val_bpb, best)))
        return result.val_bpb if result.status is Status.DISCARD else None


@dataclass
class _Replicates:
    """Fresh replicates of one candidate for :func:`settle`: each run's result is queued
    provisional once the next one starts, so the last is left for the rule's verdict."""

    host: Judges
    candidate: Candidate
    last: Result | None = None

    async def run(self) -> float | None:
        if self.last is not None:
            await self.host.queue(self.last.with_(provisional=True))
            self.last = None
        log.info("replicate_started", sha=self.candidate.sha256[:12])
        result, _ = await self.host.run_judged(self.candidate)
        if result is None or result.status is not Status.DISCARD or result.val_bpb is None:
            if result is not None:
                await self.host.queue(result)  # a crash, timeout or invalid run ends it
            return None
        self.last = result
        return result.val_bpb
