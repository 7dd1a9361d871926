"""A candidate held ready for a keep: proposed from the run in progress, as if it were kept.

While a candidate's first run trains, the worker prepares the next candidate from the best
as it stands. A keep moves the best to the candidate that ran, which makes that prepared
candidate stale, so the next one would be proposed and claimed between runs, on the
critical path. A speculation is proposed from the running candidate itself and claimed
beside its run, after the normal preparation: once the verdict is in, a speculation whose
parent is the best (our keep, replicated or not) runs next at once. One whose parent is not
(a discard, a crash, a stopped run, another agent's better best) is released beside the
next run: its claim freed, its in-flight entry and any hypothesis it took given back. A
paused or stopping worker releases it with its other claims.

A speculation is made only where it is cheap and may pay: the first run of a fresh
candidate (never the baseline, a replicate, a re-measure or a confirmation), a proposer
that calls no outside agent (each ``command`` call may be a paid model call), and a worker
neither draining nor winding down. It reuses the history its preparation just read.

While held it is in flight in the ledger, so history-aware proposers (``portfolio``,
``tpe``) count it as a running trial, as they count every claimed candidate: that steers
their other proposals from one point next to the running candidate, itself in flight, for
as long as the run lasts. It is harmless, and it is what keeps a sibling worker from
proposing the same source.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Protocol

import anyio
import structlog

from autoresearchd.config import ProposerConfig
from autoresearchd.errors import AutoresearchdError
from autoresearchd.models import Candidate
from autoresearchd.worker.best import BestView
from autoresearchd.worker.claims import Claims, Prepared
from autoresearchd.worker.context import Host
from autoresearchd.worker.modes import DeviceControl
from autoresearchd.worker.proposing import Proposing

log = structlog.get_logger(__name__)


class Speculates(Host, Protocol):
    """The worker a speculation is made for, as this module uses it."""

    @property
    def best(self) -> BestView: ...
    @property
    def claims(self) -> Claims: ...
    @property
    def proposing(self) -> Proposing: ...
    @property
    def control(self) -> DeviceControl: ...
    def beside(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start ``task`` beside the cycle, if the worker is serving."""


def asks_an_agent(config: ProposerConfig) -> bool:
    """Whether a proposal may call the outside research agent (``command``)."""
    if config.strategy == "command":
        return True
    weight = config.weights.get("command", 0.0)
    return config.strategy == "mixed" and bool(config.command) and weight > 0


class Speculating:
    """One worker's speculation: the candidate held for a keep of the run in progress."""

    def __init__(self, host: Speculates) -> None:
        self._host = host
        #: Off only for a baseline measured beside it (``benchmarks/keep_gap.py``).
        self.enabled = True
        #: The speculation, claimed; its ``parent_best`` is set once its parent is the best.
        self.held: Prepared | None = None
        self._ready: anyio.Event | None = None

    def begin(self, running: Candidate, after: anyio.Event | None) -> None:
        """Speculate on ``running`` (starting its first run) being kept, beside the run,
        once ``after`` (the normal preparation) is set."""
        if not self._worth(running):
            return
        self._ready = anyio.Event()
        self._host.beside(partial(self._prepare, running, after, self._ready))

    def _worth(self, running: Candidate) -> bool:
        host = self._host
        return (
            self.enabled
            and self.held is None
            and running.parent_sha256 is not None  # the baseline's prefetch already builds on it
            and not asks_an_agent(host.config.proposer)
            and not self._stopping()
        )

    def _stopping(self) -> bool:
        return self._host.ctx.draining.is_set() or self._host.control.winding_down

    async def _prepare(
        self, running: Candidate, after: anyio.Event | None, ready: anyio.Event
    ) -> None:
        try:
            if after is not None:
                await after.wait()  # the likely next run first, and one proposal at a time
            if not self._stopping():
                await self._claim(running)
        except AutoresearchdError as exc:
            log.warning("speculation_failed", error=str(exc))
        except Exception:
            # A bug here must cost the speculation only, never the run beside it.
            log.exception("speculation_crashed")
        finally:
            ready.set()

    async def _claim(self, running: Candidate) -> None:
        host = self._host
        candidate = await host.proposing.propose_from(running)
        if candidate is None or not await host.claims.claim(candidate):
            return
        if self._stopping():  # paused or draining while it was claimed: hold no claim
            await self._let_go(candidate)
            return
        self.held = Prepared(candidate)
        log.info("speculation_claimed", sha=candidate.sha256[:12], parent=running.sha256[:12])

    async def settled(self) -> None:
        """Wait until the speculation begun last is held, or given up."""
        if self._ready is not None:
            await self._ready.wait()

    def take(self) -> Prepared | None:
        """The speculation, once its parent is the best; otherwise it is let go, beside the
        next run (or at the worker's next release of dropped claims)."""
        held, self.held = self.held, None
        if held is None:
            return None
        best = self._host.best.current()
        if best is not None and best.train_py_sha256 == held.candidate.parent_sha256:
            log.info("speculation_taken", sha=held.candidate.sha256[:12])
            return Prepared(held.candidate, best, held.claimed_at)
        log.info("speculation_dropped", sha=held.candidate.sha256[:12])
        claims = self._host.claims
        claims.forgo(held.candidate)
        self._host.beside(claims.release_dropped)
        return None

    async def release(self) -> None:
        """Give the speculation up now: the worker pauses or stops."""
        held, self.held = self.held, None
        if held is not None:
            await self._let_go(held.candidate)

    async def _let_go(self, candidate: Candidate) -> None:
        self._host.ctx.ledger.give_back(candidate)
        await self._host.claims.release(candidate)
