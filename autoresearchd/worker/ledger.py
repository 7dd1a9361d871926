"""What a daemon's workers have in flight, have run and have refused: one ledger per daemon.

Workers of one daemon share one agent, and a claim by our own agent would succeed again,
so the ledger is what keeps them off each other's candidates. It also answers for the
memory while that is out of reach: the sources this daemon ran, and the scores of the runs
it queued that the memory may not have yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from autoresearchd.models import Candidate, Result
from autoresearchd.promotion import MEASURED
from autoresearchd.proposers.hypotheses import give_back


class Ledger:
    """The daemon-wide record of candidates in flight, sources run, and scripts refused."""

    def __init__(self) -> None:
        #: Sources of the candidates being run, by sha256; history-aware proposers also
        #: treat these as running trials.
        self._in_flight: dict[str, str] = {}
        #: Sources this daemon has run: the memory's ``was_run`` cannot answer while it is
        #: out of reach, and a mutation may walk back to a source we ran before.
        self._ran: set[str] = set()
        #: val_bpb of the runs queued here, by (tier, sha256) then result id.
        self._measured: dict[tuple[str, str], dict[str, float]] = {}
        #: sha256s of network scripts the trust check refused, each recorded once; the
        #: workers' parent choosers add to it.
        self.refused: set[str] = set()
        #: Keys of the swarm hypotheses picked up, to the sha256 of the candidate each
        #: became: each is run once here. The hypothesis proposers add to it.
        self.hypotheses: dict[str, str] = {}
        #: Why our baseline failed for this host's reasons, once it has: every worker then
        #: halts on its next such failure instead of publishing it.
        self.baseline_failed = ""

    def take(self, candidate: Candidate) -> bool:
        """Mark ``candidate`` in flight; False when one of our workers already runs it."""
        if candidate.sha256 in self._in_flight:
            return False
        self._in_flight[candidate.sha256] = candidate.source
        return True

    def done(self, sha256: str) -> None:
        """``sha256`` is no longer in flight here (run, dropped or lost)."""
        self._in_flight.pop(sha256, None)

    @contextmanager
    def running(self, candidate: Candidate) -> Iterator[None]:
        """In flight for as long as the block runs: a confirmation or a re-measure."""
        self._in_flight[candidate.sha256] = candidate.source
        try:
            yield
        finally:
            self.done(candidate.sha256)

    def in_flight(self, sha256: str) -> bool:
        return sha256 in self._in_flight

    def sources(self) -> tuple[str, ...]:
        """The sources in flight, for proposers that count them as running trials."""
        return tuple(self._in_flight.values())

    def known(self, sha256: str) -> bool:
        """True when this daemon ran ``sha256`` or runs it now."""
        return sha256 in self._ran or sha256 in self._in_flight

    def record(self, result: Result) -> None:
        """A result was queued: its source was run, and its score counts until the memory
        has it (the incumbent's runs and the noise)."""
        self._ran.add(result.train_py_sha256)
        if result.status in MEASURED and result.val_bpb is not None:
            runs = self._measured.setdefault((result.vram_tier, result.train_py_sha256), {})
            runs[result.id] = result.val_bpb

    def measured_on(self, tier: str) -> dict[str, dict[str, float]]:
        """The scores queued here on ``tier``: result ids to val_bpb, by sha256."""
        return {sha: dict(runs) for (t, sha), runs in self._measured.items() if t == tier}

    def give_back(self, candidate: Candidate) -> None:
        """Let the hypothesis ``candidate`` came from be taken up again."""
        give_back(self.hypotheses, candidate)

    def fail_baseline(self, error: str) -> None:
        """Our baseline failed for this host's reasons; the first reason is kept."""
        self.baseline_failed = self.baseline_failed or error
