"""The claims one worker holds: the next candidate, prepared and claimed, and those to give up.

A claim is made before a candidate runs and renewed when the candidate waited long. Until
a queued result is published only our claim says the candidate was run (``was_run`` counts
live claims), so such a claim is left to expire; a candidate dropped or run without a
result has its claim released, during the next run, off the critical path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
import structlog

from autoresearchd.errors import MemoryBackendError
from autoresearchd.models import Best, Candidate
from autoresearchd.worker.context import Host

log = structlog.get_logger(__name__)

#: Longest a shielded claim release may take, so a forced stop is never held up for long.
RELEASE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Prepared:
    """A claimed candidate, ready to run, and the best it was proposed from."""

    candidate: Candidate
    parent_best: Best | None = None
    claimed_at: float = field(default_factory=time.monotonic)


class Claims:
    """The claims of one worker, and the candidate it holds ready for its next run."""

    def __init__(self, host: Host) -> None:
        self._host = host
        #: The next candidate, claimed while the current run trains (or held by a pause).
        self.prepared: Prepared | None = None
        self._dropped: list[Candidate] = []

    async def claim(self, candidate: Candidate) -> bool:
        """Claim ``candidate`` for this worker; True when it is ours to run."""
        ledger, sha = self._host.ctx.ledger, candidate.sha256[:12]
        if not ledger.take(candidate):
            log.info("claim_lost", sha=sha, holder="this daemon")
            return False
        try:
            won = await self._claim(candidate)
        except MemoryBackendError as exc:
            # The network is additive, never blocking: run unclaimed rather than idle.
            log.warning("claim_unavailable", sha=sha, error=str(exc))
            return True
        except BaseException:
            ledger.done(candidate.sha256)  # cancelled or failed: not ours
            raise
        if won:
            log.info("claim_acquired", sha=sha)
        else:
            ledger.done(candidate.sha256)
            log.info("claim_lost", sha=sha)
        return won

    async def _claim(self, candidate: Candidate) -> bool:
        config = self._host.config
        return await self._host.ctx.memory.claim(
            config.experiment.track,
            candidate.sha256,
            config.daemon.agent,
            config.claim_ttl_s,
            candidate.description,
        )

    async def renew(self, ready: Prepared | None) -> Prepared | None:
        """Renew the claim of a candidate that waited long (e.g. through replicates)."""
        if ready is None or time.monotonic() - ready.claimed_at < self._host.config.claim_ttl_s / 2:
            return ready
        try:
            won = await self._claim(ready.candidate)
        except MemoryBackendError:
            won = True  # out of reach: run it, as an unclaimed run would
        if won:
            return Prepared(ready.candidate, ready.parent_best)
        self._host.ctx.ledger.done(ready.candidate.sha256)
        log.info("claim_lost", sha=ready.candidate.sha256[:12], reason="expired while waiting")
        return None

    def take(self) -> Prepared | None:
        """The candidate held for the next run, if any; it is no longer held."""
        ready, self.prepared = self.prepared, None
        return ready

    def drop(self, candidate: Candidate) -> None:
        """Give up ``candidate``'s claim at the next chance, off the critical path."""
        self._dropped.append(candidate)

    def forgo(self, candidate: Candidate) -> None:
        """Give ``candidate`` up unrun: the hypothesis it came from may be taken up again,
        and its claim is released at the next chance, off the critical path."""
        self._host.ctx.ledger.give_back(candidate)
        self.drop(candidate)

    async def release_dropped(self) -> None:
        while self._dropped:
            await self.release(self._dropped.pop())

    async def release_all(self) -> None:
        """Release every claim held, the prepared candidate's too: a paused or stopped
        worker holds none."""
        if self.prepared is not None:
            self.drop(self.prepared.candidate)
            self.prepared = None
        await self.release_dropped()

    async def release(self, candidate: Candidate) -> None:
        config = self._host.config
        self._host.ctx.ledger.done(candidate.sha256)
        with anyio.move_on_after(RELEASE_TIMEOUT_S, shield=True):
            try:
                await self._host.ctx.memory.release(
                    config.experiment.track, candidate.sha256, config.daemon.agent
                )
            except MemoryBackendError as exc:
                log.warning("release_failed", sha=candidate.sha256[:12], error=str(exc))
