"""How one worker comes to a candidate: the parent the trust policy allows, and a proposal.

The baseline runs first, once per worker while no best exists; after that a proposer
mutates the best (or, when the trust check refuses a network best, the last parent it
accepted: ``docs/architecture.md``, contract 2). A refused best and a failed proposal are
queued as results of their own, so the swarm sees them. A speculation
(:mod:`~autoresearchd.worker.speculating`) is proposed from our own run in progress instead,
with the history the proposal just before it read.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Protocol

import structlog

from autoresearchd.errors import MemoryBackendError, ProposalError
from autoresearchd.models import Best, Candidate, Result
from autoresearchd.parents import Parents
from autoresearchd.proposers.auto import make_proposer
from autoresearchd.proposers.base import ProposalContext, Proposer
from autoresearchd.records import failed_proposal, invalid_result
from autoresearchd.worker.context import Host, baseline, origin

log = structlog.get_logger(__name__)

#: Hypotheses and insights a proposal reads; the newest matter most.
NOTES_LIMIT = 100
#: How long the history one proposal read may serve a speculation made after it: the two
#: are made one after the other beside a run, and the history does not change between them.
HISTORY_REUSE_S = 60.0


class Proposes(Host, Protocol):
    """The worker a proposal is made for, as this module uses it."""

    @property
    def rng(self) -> random.Random: ...
    async def queue(self, result: Result) -> None: ...


class Proposing:
    """One worker's proposer, the parent it may mutate, and the baseline's first run."""

    def __init__(self, host: Proposes) -> None:
        self._host = host
        self.parents = Parents(host.ctx.ledger.refused)
        self._baselines: set[str] = set()
        self._proposer_for: object = None
        self._proposer: Proposer | None = None
        #: The history the last proposal read, and when: what a speculation reuses.
        self._history: tuple[float, ProposalContext] | None = None

    async def propose(self, best: Best | None) -> Candidate | None:
        """A candidate from ``best`` (the baseline while there is none), or None."""
        root = baseline(self._host.config)
        # Once per worker: with the memory out of reach, is_known cannot say it was run.
        if best is None and root.sha256 not in self._baselines:
            self._baselines.add(root.sha256)
            if not await self.is_known(root.sha256):
                return root
        parent = root if best is None else await self.trusted_parent(best, root)
        proposer = self.proposer(root)
        context = await self.context(proposer)
        try:
            return await proposer.propose(parent, self.is_known, context)
        except ProposalError as exc:
            log.warning(
                "proposal_failed", proposer=exc.proposer, outcome=exc.outcome, error=str(exc)
            )
            await self._host.queue(failed_proposal(origin(self._host), exc, parent))
            return None

    async def propose_from(self, parent: Candidate) -> Candidate | None:
        """A candidate from ``parent``, our own candidate running now, as if it were kept.

        The parent is our proposer's own work from a trusted parent, so no trust check
        applies. A failure is logged, not queued: it says nothing of a best the swarm holds.
        """
        proposer = self.proposer(baseline(self._host.config))
        try:
            return await proposer.propose(
                parent, self.is_known, await self.recent_context(proposer)
            )
        except ProposalError as exc:
            log.info("speculation_not_proposed", proposer=exc.proposer, error=str(exc))
            return None

    async def recent_context(self, proposer: Proposer) -> ProposalContext:
        """The history the last proposal read, if recent, with what is in flight now; else
        a fresh read. Reading it once per run spares the memory a second history read."""
        held = self._history
        if not proposer.uses_history or held is None:
            return await self.context(proposer)
        read_at, context = held
        if time.monotonic() - read_at > HISTORY_REUSE_S:
            return await self.context(proposer)
        return dataclasses.replace(context, in_flight=self._host.ctx.ledger.sources())

    async def is_known(self, sha256: str) -> bool:
        if self._host.ctx.ledger.known(sha256):
            return True
        try:
            return await self._host.ctx.memory.was_run(self._host.config.experiment.track, sha256)
        except MemoryBackendError:
            return False  # unknown is safe: the claim is the real guard against duplicates

    def proposer(self, root: Candidate | None = None) -> Proposer:
        """The proposer; under params-only its spaces come from the trusted ``root``."""
        config = self._host.config
        trust = config.experiment.trust
        trusted = root.source if root and trust == "params-only" else None
        key = (config.proposer, trusted)
        if self._proposer is None or self._proposer_for != key:
            self._proposer = make_proposer(
                config.proposer,
                self._host.rng,
                baseline=trusted,
                trust=trust,
                taken=self._host.ctx.ledger.hypotheses,
            )
            self._proposer_for = key
        return self._proposer

    async def context(self, proposer: Proposer) -> ProposalContext:
        """The swarm's history and in-flight candidates; empty when the memory fails."""
        host = self._host
        in_flight = host.ctx.ledger.sources()
        device, tier = host.device.kind, host.device.tier  # proposers skip what a kind ignores
        if not proposer.uses_history:
            return ProposalContext(in_flight=in_flight, device=device, tier=tier)
        memory, track = host.ctx.memory, host.config.experiment.track
        try:
            results = await memory.results(track, limit=host.config.proposer.max_history)
            hypotheses = await memory.notes("hypotheses", NOTES_LIMIT)
            insights = await memory.notes("insights", NOTES_LIMIT)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            return ProposalContext(in_flight=in_flight, device=device, tier=tier)
        mine = [n for n in hypotheses if n.value.get("track", track) == track]
        context = ProposalContext(results, in_flight, mine, insights, device=device, tier=tier)
        self._history = (time.monotonic(), context)
        return context

    async def trusted_parent(self, best: Best, root: Candidate) -> Candidate:
        """``best`` as a parent if the trust policy accepts it, else the last trusted parent.

        A refused best is recorded once as an ``invalid`` result and never run.
        """
        parent, refusal = self.parents.choose(best, root, self._host.config.experiment.trust)
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
        await self._host.queue(invalid_result(origin(self._host), refusal.candidate, reason))
        return parent
