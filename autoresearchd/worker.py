"""One worker per device: pull the best, propose, claim, run, judge, queue the result.

The loop never waits on the network to start its next run: results go to the durable
outbox for the publisher, the next candidate is prepared while the current one trains,
and a memory that cannot be reached degrades to the last known best and unclaimed runs.
A candidate that beats the best by ``min_improvement`` is provisional: it becomes a
``keep`` only when fresh replicates with other seeds, against the incumbent's own runs,
show an improvement the track's noise does not explain. Shared state the daemon owns
arrives in a :class:`WorkerContext`. The worker orchestrates the cycle; what it builds on
lives beside it: ``judging`` (a result against the best), ``promotion`` (when replicates
promote), ``records`` (results from runs), ``parents`` (the trust policy for network
bests) and ``sharing`` (notes to the swarm).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from autoresearchd import compile_cache
from autoresearchd.config import Config
from autoresearchd.confirming import Confirming
from autoresearchd.early_stopping import EarlyStopping
from autoresearchd.errors import AutoresearchdError, MemoryBackendError, ProposalError
from autoresearchd.gpus import Gpus
from autoresearchd.health import DeviceHealth, FlapDetector, sleep_unless
from autoresearchd.hypotheses import give_back
from autoresearchd.judging import (
    best_from,
    delta_vs_best,
    improves,
    lowest,
    own_outdated,
    plausible,
)
from autoresearchd.memory.protocol import CollectiveMemory
from autoresearchd.models import Best, Candidate, Device, Result, Status
from autoresearchd.outbox import Outbox
from autoresearchd.parents import Parents
from autoresearchd.promotion import (
    MEASURED,
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
from autoresearchd.proposers import ProposalContext, Proposer, make_proposer
from autoresearchd.publisher import Publisher
from autoresearchd.records import Origin, build_result, failed_proposal, invalid_result, new_run_id
from autoresearchd.run_spec import RunSpec
from autoresearchd.runner import RunReport, run_experiment
from autoresearchd.sandbox import Sandbox, environment_failure
from autoresearchd.sharing import Sharing
from autoresearchd.standby import Key, Standby, opts_in

log = structlog.get_logger(__name__)

#: Pause after a cycle that found nothing to do, so an idle worker does not spin.
IDLE_PAUSE_S = 5.0
#: Pause after an unexpected error inside one worker; the others carry on meanwhile.
ERROR_PAUSE_S = 30.0
#: A run still going this long after its hard limit (budget, grace, kill grace) is wedged.
WEDGED_MARGIN_S = 60.0
#: How the health states read in ``autoresearchd status``; any other state is "idle".
HEALTH_STATES = {
    "foreign_process": "waiting_foreign_process",
    "too_hot": "too_hot",
    "backing_off": "backing_off",
}
#: Proposals to try in one go when other workers keep winning the claims.
CLAIM_ATTEMPTS = 3
#: Longest wait for the best before a finished result is judged against the last one known:
#: the result must reach the outbox promptly, whatever the network does.
BEST_READ_TIMEOUT_S = 5.0
#: Longest a shielded claim release may take, so a forced stop is never held up for long.
RELEASE_TIMEOUT_S = 10.0
#: Hypotheses and insights a proposal reads; the newest matter most.
NOTES_LIMIT = 100
#: The proposer a re-measure of the incumbent records: a deliberate rerun, not a candidate.
REMEASURE = "remeasure"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A claimed candidate, ready to run, and the best it was proposed from."""

    candidate: Candidate
    parent_best: Best | None = None
    claimed_at: float = field(default_factory=time.monotonic)


@dataclass
class WorkerContext:
    """What the daemon shares with its workers. ``config`` is swapped on reload."""

    config: Config
    memory: CollectiveMemory
    outbox: Outbox
    publisher: Publisher
    gpus: Gpus
    draining: anyio.Event = field(default_factory=anyio.Event)
    stop_runs: anyio.Event = field(default_factory=anyio.Event)
    software: dict[str, str] = field(default_factory=dict)
    #: Sources of the candidates this daemon's workers are running, by sha256. A claim by our
    #: own agent would succeed again, so workers in one daemon keep each other off the same
    #: candidate with this; history-aware proposers also treat these as running trials.
    in_flight: dict[str, str] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    #: Set when our baseline failed for this host's reasons: every worker then halts on its
    #: next such failure instead of publishing it.
    baseline_failed: str = ""
    #: Sources this daemon has run, by sha256: the memory's ``was_run`` cannot answer while
    #: it is out of reach, and a mutation may walk back to a source we ran before.
    ran: set[str] = field(default_factory=set)
    #: sha256s of network scripts refused by the trust check, recorded once per daemon.
    refused: set[str] = field(default_factory=set)
    #: Keys of the swarm hypotheses this daemon's workers picked up, to the sha256 of the
    #: candidate each became: each is run once here.
    hypotheses_taken: dict[str, str] = field(default_factory=dict)
    #: val_bpb of the runs this daemon queued, by (tier, sha256) then result id: the
    #: incumbent's runs and the noise count them before the memory has them.
    measured: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    new_seed: Callable[[], int] = field(default=lambda: random.SystemRandom().randrange(2**31))
    #: Stored learning curves and their calibration: what stops hopeless runs early.
    stopping: EarlyStopping = field(default_factory=EarlyStopping)


class Worker:
    """Keeps one device busy with experiments until the daemon drains."""

    def __init__(
        self, device: Device, ctx: WorkerContext, rng: random.Random | None = None
    ) -> None:
        self.device = device
        self.ctx = ctx
        self.rng = rng or random.Random()
        self.health = DeviceHealth(ctx.gpus, ctx.draining, ctx.config.daemon.health_interval_s)
        self.flaps = FlapDetector()
        self.current: Candidate | None = None
        self.run_started_at: float | None = None
        self.last_val_bpb: float | None = None
        self.last_stopped_early: float | None = None
        self.results_queued = 0
        self._baselines: set[str] = set()
        self._best: Best | None = None
        self._own_best: Best | None = None
        self._memory_answered = False  # a None best means "none yet" only once it has
        self._next: Prepared | None = None
        self._to_release: list[Candidate] = []
        self._moved_best = False
        self._proposer_for: object = None
        self._proposer: Proposer | None = None
        self._flap_delay = 0.0
        self._background: anyio.abc.TaskGroup | None = None
        self._run_clock = 0.0
        self._prefetched: anyio.Event | None = None
        #: The next candidate's process, started while the current run trains.
        self.standby = Standby()
        self.sharing = Sharing(ctx.memory, lambda: self.baseline().source)
        self.parents = Parents(ctx.refused)
        # Pausing, from the control socket: a paused worker asks for no work at all.
        self.paused = False
        self.finishing = False
        self.run_id: str | None = None
        self._resumed = anyio.Event()
        self._run_stop: anyio.Event | None = None
        #: Why this worker stopped for good: its own baseline failed for this host's reasons.
        self.halted = ""
        self.confirming = Confirming(self)

    @property
    def config(self) -> Config:
        return self.ctx.config

    async def serve(self) -> None:
        structlog.contextvars.bind_contextvars(device=self.device.uuid)
        log.info("worker_started", name=self.device.name, tier=self.device.tier)
        # The next candidate is prepared in this group, so a run never waits for it.
        async with anyio.create_task_group() as self._background:
            while not self.ctx.draining.is_set():
                await self._guarded(self._step)
            self._background.cancel_scope.cancel()
        await self._release_all()
        log.info("worker_stopped")

    async def _step(self) -> None:
        if self.halted:
            await self.ctx.draining.wait()  # every run would fail the same way: stay put
            return
        await self._hold_while_paused()
        self.device = await self.health.wait_until_ready(self.device, self.config.devices)
        if not self.ctx.draining.is_set() and not self.paused:
            await self.cycle()

    async def _guarded(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except* AutoresearchdError as group:
            for exc in group.exceptions:
                log.error("worker_error", error=str(exc))
            await sleep_unless(ERROR_PAUSE_S, self.ctx.draining)
        except* Exception:
            # Isolation, not retry: a bug met by one device must not stop the others.
            log.exception("worker_crashed")
            await sleep_unless(ERROR_PAUSE_S, self.ctx.draining)

    async def cycle(self) -> None:
        """One candidate, from proposal to queued results (or, at times, a rerun of
        another agent's claim: :mod:`autoresearchd.confirming`)."""
        if await self.confirming.turn():
            return
        if self._prefetched is not None:
            await self._prefetched.wait()  # the next candidate, if one is being prepared
        ready = await self._refresh(self._take_prepared())
        await self.standby.keep_only(self.standby_key(ready.candidate) if ready else None)
        if ready is None:
            # Claims of candidates dropped unrun still count as runs (``was_run`` sees live
            # claims): free them first, or a fresh proposal of the same source looks known.
            await self._release_finished()
            ready = await self.prepare()
        if ready is None:
            await sleep_unless(IDLE_PAUSE_S, self.ctx.draining)
            return
        if self.paused:
            # Paused (or finished with nothing running) while it prepared: a run started
            # now would only be stopped at once. The next step's pause frees its claim.
            self._next = ready
            return
        self.current, queued = ready.candidate, False
        try:
            queued = await self.evaluate(ready.candidate)
        finally:
            self.current = None
            self.ctx.in_flight.pop(ready.candidate.sha256, None)
            # Until a queued result is published only our claim says the candidate was run
            # (``was_run`` counts live claims), so such a claim is left to expire; a run
            # without a result frees it, during the next run, off the critical path.
            if not queued:
                self._to_release.append(ready.candidate)
        await self.sharing.share(self.config, ready.candidate, ready.parent_best)
        await self._maybe_back_off()

    async def prepare(self) -> Prepared | None:
        """Everything a run needs from the memory: the best, a fresh candidate, its claim."""
        for _ in range(CLAIM_ATTEMPTS):
            best = await self.read_best()
            candidate = await self.propose(best)
            if candidate is None:
                return None
            log.info(
                "candidate_proposed",
                sha=candidate.sha256[:12],
                proposer=candidate.proposer,
                description=candidate.description,
            )
            if await self.claim(candidate):
                return Prepared(candidate, best)
        return None

    def _take_prepared(self) -> Prepared | None:
        ready, self._next = self._next, None
        if ready is not None and self._moved_best and not self._builds_on_own_best(ready):
            # Proposed from a best we have since beaten: make a fresh one from the new best,
            # and let a hypothesis it came from be applied to that best instead. ``cycle``
            # releases it (claim and in-flight entry) before it proposes again.
            self._to_release.append(ready.candidate)
            give_back(self.ctx.hypotheses_taken, ready.candidate)
            ready = None
        self._moved_best = False
        return ready

    def _builds_on_own_best(self, ready: Prepared) -> bool:
        """True when ``ready`` is a change of the best we just kept (a candidate prepared
        while the baseline ran, say): the best moving to its own parent leaves it current."""
        own = self._own_best
        return own is not None and ready.candidate.parent_sha256 == own.train_py_sha256

    async def _refresh(self, ready: Prepared | None) -> Prepared | None:
        """Renew the claim of a candidate that waited long (e.g. through replicates)."""
        if ready is None or time.monotonic() - ready.claimed_at < self.config.claim_ttl_s / 2:
            return ready
        track, agent = self.config.experiment.track, self.config.daemon.agent
        try:
            won = await self.ctx.memory.claim(
                track,
                ready.candidate.sha256,
                agent,
                self.config.claim_ttl_s,
                ready.candidate.description,
            )
        except MemoryBackendError:
            won = True  # out of reach: run it, as an unclaimed run would
        if won:
            return Prepared(ready.candidate, ready.parent_best)
        self.ctx.in_flight.pop(ready.candidate.sha256, None)
        log.info("claim_lost", sha=ready.candidate.sha256[:12], reason="expired while waiting")
        return None

    async def _alongside_run(self, done: anyio.Event) -> None:
        """While a run trains: release finished claims and prepare the next candidate."""
        try:
            await self._release_finished()
            if self._next is None and not self.ctx.draining.is_set() and not self._winding_down:
                self._next = await self.prepare()
        except AutoresearchdError as exc:
            log.warning("prefetch_failed", error=str(exc))
        except Exception:
            # A bug here must cost the next proposal only, never the run beside it.
            log.exception("prefetch_crashed")
        finally:
            done.set()

    async def _release_finished(self) -> None:
        while self._to_release:
            await self.release(self._to_release.pop())

    async def _release_all(self) -> None:
        await self.standby.discard()
        if self._next is not None:
            self._to_release.append(self._next.candidate)
            self._next = None
        await self._release_finished()

    # -- the memory, degrading gracefully when it is out of reach ------------------------

    async def read_best(self) -> Best | None:
        """The best for this device's tier, else the track's; the last known on failure.

        Our own latest keep counts too: the publisher may not have delivered it yet.
        """
        track = self.config.experiment.track
        try:
            best = await self.ctx.memory.get_best(track, self.device.tier)
            self._best = best or await self.ctx.memory.get_best(track)
            self._memory_answered = True
        except MemoryBackendError as exc:
            log.warning("best_unavailable", error=str(exc))
        own = self._own_best
        if own is not None and own_outdated(own, self._best, track):
            self._own_best = None  # the memory has caught up (or the track changed)
        return lowest(self._best, self._own_best)

    async def is_known(self, sha256: str) -> bool:
        if sha256 in self.ctx.ran or sha256 in self.ctx.in_flight:
            return True
        try:
            return await self.ctx.memory.was_run(self.config.experiment.track, sha256)
        except MemoryBackendError:
            return False  # unknown is safe: the claim is the real guard against duplicates

    async def claim(self, candidate: Candidate) -> bool:
        track, agent = self.config.experiment.track, self.config.daemon.agent
        if candidate.sha256 in self.ctx.in_flight:
            log.info("claim_lost", sha=candidate.sha256[:12], holder="this daemon")
            return False
        self.ctx.in_flight[candidate.sha256] = candidate.source
        try:
            won = await self.ctx.memory.claim(
                track, candidate.sha256, agent, self.config.claim_ttl_s, candidate.description
            )
        except MemoryBackendError as exc:
            # The network is additive, never blocking: run unclaimed rather than idle.
            log.warning("claim_unavailable", sha=candidate.sha256[:12], error=str(exc))
            return True
        except BaseException:
            self.ctx.in_flight.pop(candidate.sha256, None)  # cancelled or failed: not ours
            raise
        if won:
            log.info("claim_acquired", sha=candidate.sha256[:12])
        else:
            self.ctx.in_flight.pop(candidate.sha256, None)
            log.info("claim_lost", sha=candidate.sha256[:12])
        return won

    async def release(self, candidate: Candidate) -> None:
        track, agent = self.config.experiment.track, self.config.daemon.agent
        self.ctx.in_flight.pop(candidate.sha256, None)
        with anyio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
            try:
                await self.ctx.memory.release(track, candidate.sha256, agent)
            except MemoryBackendError as exc:
                log.warning("release_failed", sha=candidate.sha256[:12], error=str(exc))

    # -- proposing -------------------------------------------------------------------

    def baseline(self) -> Candidate:
        script = self.config.experiment.workspace / self.config.experiment.script
        source = script.read_text(encoding="utf-8")
        return Candidate(source=source, parent_sha256=None, description="baseline")

    def proposer(self, baseline: Candidate | None = None) -> Proposer:
        """The proposer; under params-only its spaces come from the trusted ``baseline``."""
        trust = self.config.experiment.trust
        trusted = baseline.source if baseline and trust == "params-only" else None
        key = (self.config.proposer, trusted)
        if self._proposer is None or self._proposer_for != key:
            self._proposer = make_proposer(
                self.config.proposer,
                self.rng,
                baseline=trusted,
                trust=trust,
                taken=self.ctx.hypotheses_taken,
            )
            self._proposer_for = key
        return self._proposer

    async def proposal_context(self, proposer: Proposer) -> ProposalContext:
        """The swarm's history and in-flight candidates; empty when the memory fails."""
        in_flight = tuple(self.ctx.in_flight.values())
        device = self.device.kind  # proposers leave parameters this kind never reads alone
        if not proposer.uses_history:
            return ProposalContext(in_flight=in_flight, device=device, tier=self.device.tier)
        memory, track = self.ctx.memory, self.config.experiment.track
        try:
            results = await memory.results(track, limit=self.config.proposer.max_history)
            hypotheses = await memory.notes("hypotheses", NOTES_LIMIT)
            insights = await memory.notes("insights", NOTES_LIMIT)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            return ProposalContext(in_flight=in_flight, device=device, tier=self.device.tier)
        mine = [n for n in hypotheses if n.value.get("track", track) == track]
        return ProposalContext(
            results, in_flight, mine, insights, device=device, tier=self.device.tier
        )

    async def propose(self, best: Best | None) -> Candidate | None:
        baseline = self.baseline()
        # Once per worker: with the memory out of reach, is_known cannot say it was run.
        if best is None and baseline.sha256 not in self._baselines:
            self._baselines.add(baseline.sha256)
            if not await self.is_known(baseline.sha256):
                return baseline
        parent = baseline if best is None else await self.trusted_parent(best, baseline)
        proposer = self.proposer(baseline)
        context = await self.proposal_context(proposer)
        try:
            return await proposer.propose(parent, self.is_known, context)
        except ProposalError as exc:
            log.warning(
                "proposal_failed", proposer=exc.proposer, outcome=exc.outcome, error=str(exc)
            )
            await self.queue(failed_proposal(self.origin(), exc, parent))
            return None

    # -- trust (docs/architecture.md, contract 2) ---------------------------------------

    async def trusted_parent(self, best: Best, baseline: Candidate) -> Candidate:
        """``best`` as a parent if the trust policy accepts it, else the last trusted parent.

        A refused best is recorded once as an ``invalid`` result and never run.
        """
        trust = self.config.experiment.trust
        parent, refusal = self.parents.choose(best, baseline, trust)
        if refusal is None:
            return parent
        log.warning(
            "best_refused",
            sha=refusal.candidate.sha256[:12],
            agent=best.agent_id,
            reason=refusal.reason,
            parent=parent.sha256[:12],
        )
        reason = f"trust: {refusal.reason}"
        await self.queue(invalid_result(self.origin(), refusal.candidate, reason))
        return parent

    # -- running and judging ---------------------------------------------------------

    async def evaluate(self, candidate: Candidate) -> bool:
        """Run a candidate, and its replicates when it looks like an improvement.

        Each result is judged against the best as it stands after the run, not as it
        stood when the candidate was proposed: the best may have moved meanwhile.
        """
        result, best = await self.run_judged(candidate, alongside=True, stoppable=True)
        if result is None:
            return False
        min_improvement = self.config.experiment.min_improvement
        if result.status is not Status.DISCARD or not improves(
            result.val_bpb, best, min_improvement
        ):
            await self.queue(result)
        elif self._first_ever(candidate, best) or self.config.experiment.replicates == 0:
            await self.queue(result.with_(status=Status.KEEP, confirmed_bpb=result.val_bpb))
        else:
            await self.replicate(candidate, result, best)
        return True

    def _first_ever(self, candidate: Candidate, best: Best | None) -> bool:
        """The memory said there is no best and this is the baseline: it sets the first best
        unreplicated. Mutations of it, run alongside by other workers, replicate as usual; so
        does any result when the best could not be read (unknown is not absent)."""
        return best is None and self._memory_answered and candidate.parent_sha256 is None

    async def replicate(self, candidate: Candidate, first: Result, best: Best | None) -> None:
        """Confirm a provisional improvement with fresh replicates before calling it a keep.

        The promotion rule (:mod:`autoresearchd.promotion`) says what to run next: the
        candidate again, or the incumbent when it has too few runs of its own. Each fresh
        replicate is queued provisional until the rule decides, then as keep or discard.
        """
        await self.queue(first.with_(provisional=True))
        measured = await self.measured()
        noise = pooled_noise(runs.values() for runs in measured.values())
        remeasurable = best is not None and self._may_remeasure(best)
        trial = new_trial(first.val_bpb or math.inf, best, measured, remeasurable)
        rule = make_rule(self.config.experiment, noise)
        log.info("replication_planned", noise_sd=round(noise.sd, 6), noise_dof=noise.dof)
        replicates = _Replicates(self, candidate)
        step, trial = await settle(
            rule, trial, replicates.run, lambda: self.remeasure(best), self.ctx.draining.is_set
        )
        if replicates.last is None:
            return
        if step is None:  # stopped while the rule was undecided: the run is still a result
            await self.queue(replicates.last.with_(provisional=True))
        else:
            await self.confirm(replicates.last, trial, rule, step)

    async def confirm(self, last: Result, trial: Trial, rule: Rule, step: Step) -> None:
        """Queue the last replicate as the keep the rule found, or as a plain discard."""
        value = rule.confirmed(trial)
        best = await self.read_best()
        if accepts(step, value, best):
            delta = delta_vs_best(value, best)
            await self.queue(
                last.with_(status=Status.KEEP, confirmed_bpb=value, delta_vs_best=delta)
            )
            return
        log.info(
            "replication_failed",
            mean_val_bpb=statistics.fmean(trial.fresh),
            runs=len(trial.fresh),
            incumbent_runs=len(trial.incumbent or ()),
        )
        await self.queue(last)

    async def measured(self) -> dict[str, dict[str, float]]:
        """Each source's runs on this track and tier: the history's and this daemon's own."""
        track, tier = self.config.experiment.track, self.device.tier
        try:
            history = await self.ctx.memory.results(track, limit=self.config.proposer.max_history)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            history = []
        found = measurements(history, track, tier)
        for (run_tier, sha), runs in self.ctx.measured.items():
            if run_tier == tier:
                found.setdefault(sha, {}).update(runs)
        return found

    def _may_remeasure(self, best: Best) -> bool:
        """The incumbent's source may run here: trusted, and no other worker of ours runs it."""
        if best.train_py_sha256 in self.ctx.in_flight:
            return False
        parent, _ = self.parents.choose(best, self.baseline(), self.config.experiment.trust)
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
        self.ctx.in_flight[incumbent.sha256] = incumbent.source
        try:
            result = await self.run(incumbent)
        finally:
            self.ctx.in_flight.pop(incumbent.sha256, None)
        if result is None:
            return None
        await self.queue(result.with_(delta_vs_best=delta_vs_best(result.val_bpb, best)))
        return result.val_bpb if result.status is Status.DISCARD else None

    async def run_judged(
        self, candidate: Candidate, *, alongside: bool = False, stoppable: bool = False
    ) -> tuple[Result | None, Best | None]:
        """Run ``candidate`` (preparing the next one alongside, if asked, and stopping it
        early if ``stoppable`` and hopeless), then judge it against the best as it stands
        now, waiting at most ``BEST_READ_TIMEOUT_S``."""
        if alongside and self._background is not None:
            self._prefetched = anyio.Event()
            self._background.start_soon(self._alongside_run, self._prefetched)
        result = await self.run(candidate, stoppable=stoppable)
        if result is None or result.status is not Status.DISCARD:
            return result, self._best  # no score to judge: queue it at once
        best = self._best
        with anyio.move_on_after(BEST_READ_TIMEOUT_S):
            best = await self.read_best()
        return result.with_(delta_vs_best=delta_vs_best(result.val_bpb, best)), best

    async def run(self, candidate: Candidate, *, stoppable: bool = False) -> Result | None:
        held = self.standby.take(self.standby_key(candidate))
        seed = held.seed if held else self.ctx.new_seed()
        run_id = held.spec.run_id if held else new_run_id(self.config.daemon.agent)
        spec = held.spec if held else self.spec(run_id, candidate, seed)
        if stoppable:  # only a candidate's first run: never a replicate or a re-measure
            best = lowest(self._best, self._own_best)
            experiment, tier = self.config.experiment, self.device.tier
            curve = self.ctx.stopping.curve_for(experiment, tier, candidate, best)
            spec = dataclasses.replace(spec, curve=curve)
            if curve is not None and self._background is not None:
                self._background.start_soon(self._refresh_stopping)
        structlog.contextvars.bind_contextvars(run_id=run_id)
        try:
            self.run_started_at, self.run_id = time.time(), run_id
            self._run_clock = time.monotonic()
            async with self._stop_signal() as stop, self._standby_alongside(candidate):
                report = await run_experiment(
                    spec, stop=stop, standby=held.started if held else None
                )
        finally:
            self.run_started_at = self.run_id = None
            structlog.contextvars.unbind_contextvars("run_id")
        self.standby.learn(report)
        return self.record(candidate, report, seed)

    async def _refresh_stopping(self) -> None:
        """Recalibrate early stopping on the swarm's stored curves, beside the run."""
        limit = self.config.proposer.max_history
        try:
            await self.ctx.stopping.refresh(
                self.ctx.memory, self.config.experiment, self.device.tier, limit=limit
            )
        except Exception:
            # A bug here must cost early stopping only, never the run beside it.
            log.exception("early_stopping_refresh_crashed")

    def standby_key(self, candidate: Candidate) -> Key:
        """What a standby of ``candidate`` must match to run here now."""
        sandboxed = self.ctx.sandbox is not None and self.config.experiment.sandbox != "off"
        return Key(candidate.sha256, self.device.uuid, self.config.experiment, sandboxed)

    @asynccontextmanager
    async def _standby_alongside(self, running: Candidate) -> AsyncIterator[None]:
        """While a run goes on, start the next candidate's process in time for its turn."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._start_standby, running)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _start_standby(self, running: Candidate) -> None:
        delay = self.standby.delay_s(self.device, self.config.experiment.time_budget_s)
        await anyio.sleep(delay)
        if self._prefetched is not None:
            await self._prefetched.wait()
        ready = self._next
        if ready is None or self.standby.held is not None or self._winding_down:
            return
        candidate = ready.candidate
        if candidate.sha256 == running.sha256 or not opts_in(candidate.source):
            return
        if self.ctx.draining.is_set():
            return
        run_id, seed = new_run_id(self.config.daemon.agent), self.ctx.new_seed()
        try:
            spec = self.spec(run_id, candidate, seed)
            await self.standby.start(self.standby_key(candidate), spec, seed)
        except Exception:
            # A bug here must cost the next run its head start only, never the run beside it.
            log.exception("standby_crashed")

    def spec(self, run_id: str, candidate: Candidate, seed: int) -> RunSpec:
        spec = RunSpec.from_config(
            self.config.experiment,
            run_root=self.config.run_dir,
            run_id=run_id,
            candidate=candidate,
            device=self.device,
            seed=seed,
        )
        cache = compile_cache.for_run(self.config, self.device, candidate)
        if cache is not None:
            env = {**spec.extra_env, **compile_cache.cache_env(cache)}
            spec = dataclasses.replace(spec, extra_env=env)
        sandbox = self.ctx.sandbox
        if sandbox is None or self.config.experiment.sandbox == "off":
            return spec
        slot = zlib.crc32(self.device.uuid.encode())
        writable = (cache,) if cache is not None else ()
        return dataclasses.replace(spec, wrap=sandbox.wrapper(spec.run_dir, slot, writable))

    def record(self, candidate: Candidate, report: RunReport, seed: int) -> Result | None:
        """Turn a run into a result; a run stopped by shutdown is no result at all."""
        log.info(
            "run_finished",
            run_id=report.run_id,
            status=report.outcome,
            val_bpb=report.summary.val_bpb if report.summary else None,
            duration_s=round(report.duration_s, 2),
            error=report.error or None,
        )
        self._flap_delay = self.flaps.record(report.outcome == "crash", report.duration_s)
        self.last_stopped_early = report.stopped_early
        if report.outcome == "stopped" or self._halts_on(candidate, report):
            return None
        # A score no honest run can reach (negative, below the track's floor) is invalid.
        result = plausible(build_result(self.origin(), candidate, report, seed))
        self.last_val_bpb = result.val_bpb if result.val_bpb is not None else self.last_val_bpb
        return result

    def _halts_on(self, candidate: Candidate, report: RunReport) -> bool:
        """Our own baseline failing for this host's reasons (a path the sandbox cannot
        reach, a missing interpreter) halts the worker rather than publish a crash per run."""
        if report.outcome != "crash" or not environment_failure(report.error):
            return False
        if candidate.parent_sha256 is not None and not self.ctx.baseline_failed:
            return False
        self.ctx.baseline_failed = self.ctx.baseline_failed or report.error
        self.halted, self._flap_delay = report.error, 0.0
        log.error(
            "worker_halted", reason="baseline_failed", error=report.error, log=str(report.log_path)
        )
        return True

    def origin(self) -> Origin:
        """What this worker's records carry now: the config and device may have changed."""
        agent, track = self.config.daemon.agent, self.config.experiment.track
        return Origin(agent, track, self.device, self.ctx.software)

    async def queue(self, result: Result) -> None:
        """Durably queue a result for the publisher, then wake it."""
        with anyio.CancelScope(shield=True):  # a result half-handled is a result lost
            await anyio.to_thread.run_sync(self.ctx.outbox.put, result)
            self.results_queued += 1
            self.ctx.ran.add(result.train_py_sha256)
        self.ctx.stopping.remember(result)
        if result.status in MEASURED and result.val_bpb is not None:
            # Until the memory has it, only we know this run measured its source.
            runs = self.ctx.measured.setdefault((result.vram_tier, result.train_py_sha256), {})
            runs[result.id] = result.val_bpb
        self.ctx.publisher.notify()
        if result.status is Status.KEEP:
            self._moved_best = True
            self._own_best = best_from(result)
            self.sharing.kept(result)
        log.info(
            "result_queued",
            result_id=result.id,
            status=str(result.status),
            val_bpb=result.val_bpb,
            provisional=result.provisional,
        )

    async def _maybe_back_off(self) -> None:
        delay, self._flap_delay = self._flap_delay, 0.0
        if delay:
            self.health.state = "backing_off"
            log.warning(
                "worker_backoff", reason="flapping", delay_s=delay, crashes=self.flaps.streak
            )
            await sleep_unless(delay, self.ctx.draining)

    # -- pause, resume and finish (the control socket), and what status shows ---------------

    def pause(self) -> None:
        """Stop the run in progress now (it leaves no result) and ask for no more work."""
        self.paused, self.finishing = True, False
        if self._run_stop is not None:
            self._run_stop.set()

    def finish(self) -> None:
        """Let the current candidate (and its replicates) finish, then pause."""
        if self.current is None:
            self.pause()
        elif not self.paused:
            self.finishing = True

    def resume(self) -> None:
        self.paused = self.finishing = False
        # Wake whoever waits on this event, and arm a fresh one for the next pause.
        self._resumed.set()
        self._resumed = anyio.Event()

    async def _hold_while_paused(self) -> None:
        if self.finishing:
            self.paused, self.finishing = True, False
        if not self.paused:
            return
        await self._release_all()  # a paused device holds no claims
        log.info("worker_paused")
        await wait_any(self._resumed, self.ctx.draining)
        log.info("worker_resumed", draining=self.ctx.draining.is_set())

    @property
    def _winding_down(self) -> bool:
        """Paused or finishing: claim nothing more."""
        return self.paused or self.finishing

    @asynccontextmanager
    async def _stop_signal(self) -> AsyncIterator[anyio.Event]:
        """An event set when the daemon stops runs or this device is paused."""
        stop = self._run_stop = anyio.Event()
        if self.paused:
            stop.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_relay, self.ctx.stop_runs, stop)
            try:
                yield stop
            finally:
                self._run_stop = None
                tg.cancel_scope.cancel()

    @property
    def state(self) -> str:
        """running, finishing, stopping, paused, waiting_foreign_process, too_hot,
        backing_off or idle."""
        if self.halted:
            return "halted"
        if self.run_started_at is not None:
            if self.paused:
                return "stopping"
            return "finishing" if self.finishing else "running"
        if self.paused:
            return "paused"
        return HEALTH_STATES.get(self.health.state, "idle")

    @property
    def known_best(self) -> Best | None:
        """The best this worker last read from the memory."""
        return self._best

    def is_wedged(self, now: float) -> bool:
        """True when a run has outlived every limit the runner enforces.

        Measured on the monotonic clock (``now`` is wall time, kept for the callers): a
        clock step at boot must not make every worker look wedged to the watchdog.
        """
        if self.run_started_at is None:
            return False
        exp = self.config.experiment
        limit = exp.time_budget_s + exp.grace_s + exp.kill_grace_s + WEDGED_MARGIN_S
        return time.monotonic() - self._run_clock > limit

    def snapshot(self, now: float) -> dict[str, Any]:
        """This device's part of ``autoresearchd status --json``."""
        d = self.device
        return {
            "index": d.index,
            "uuid": d.uuid,
            "name": d.name,
            "kind": d.kind,
            "tier": d.tier,
            "temperature_c": d.temperature_c,
            "state": self.state,
            "experiment": self._experiment(now),
            "last_val_bpb": self.last_val_bpb,
            "last_stopped_early": self.last_stopped_early,
            "early_stopping": self.ctx.stopping.describe(self.config.experiment.track, d.tier),
            "halted": self.halted or None,
        }

    def _experiment(self, now: float) -> dict[str, Any] | None:
        candidate, started = self.current, self.run_started_at
        if candidate is None or started is None:
            return None
        elapsed = max(0.0, now - started)
        budget = self.config.experiment.time_budget_s
        return {
            "run_id": self.run_id,
            "sha256": candidate.sha256,
            "description": candidate.description,
            "started_at": started,
            "elapsed_s": round(elapsed, 1),
            "budget_s": budget,
            "remaining_s": round(max(0.0, budget - elapsed), 1),
        }


@dataclass
class _Replicates:
    """Fresh replicates of one candidate for :func:`settle`: each run's result is queued
    provisional once the next one starts, so the last is left for the rule's verdict."""

    worker: Worker
    candidate: Candidate
    last: Result | None = None

    async def run(self) -> float | None:
        if self.last is not None:
            await self.worker.queue(self.last.with_(provisional=True))
            self.last = None
        log.info("replicate_started", sha=self.candidate.sha256[:12])
        result, _ = await self.worker.run_judged(self.candidate)
        if result is None or result.status is not Status.DISCARD or result.val_bpb is None:
            if result is not None:
                await self.worker.queue(result)  # a crash, timeout or invalid run ends it
            return None
        self.last = result
        return result.val_bpb


async def _relay(source: anyio.Event, target: anyio.Event) -> None:
    await source.wait()
    target.set()


async def wait_any(*events: anyio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with anyio.create_task_group() as tg:
        for event in events:
            tg.start_soon(_wait_then_cancel, event, tg.cancel_scope)


async def _wait_then_cancel(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
