"""The best as one worker sees it: the memory's, our own keep not yet there, the last known.

A memory out of reach leaves the last best it gave; our own latest keep counts as well
until the memory has it (the publisher may not have delivered it yet). A best that moved
because of our own keep makes a candidate prepared from the older best stale.
"""

from __future__ import annotations

import structlog

from autoresearchd.errors import MemoryBackendError
from autoresearchd.judging import best_from, lowest, own_outdated
from autoresearchd.models import Best, Candidate, Result
from autoresearchd.worker.context import Host

log = structlog.get_logger(__name__)


class BestView:
    """One worker's view of the best of its track and tier."""

    def __init__(self, host: Host) -> None:
        self._host = host
        #: The best the memory last gave.
        self.known: Best | None = None
        #: Our own latest keep, until the memory has caught up with it.
        self.own: Best | None = None
        #: A None best means "none yet" only once the memory has answered.
        self.answered = False
        self._moved = False

    async def read(self) -> Best | None:
        """The best for the device's tier, else the track's; the last known on failure."""
        memory, track = self._host.ctx.memory, self._host.config.experiment.track
        try:
            best = await memory.get_best(track, self._host.device.tier)
            self.known = best or await memory.get_best(track)
            self.answered = True
        except MemoryBackendError as exc:
            log.warning("best_unavailable", error=str(exc))
        if self.own is not None and own_outdated(self.own, self.known, track):
            self.own = None  # the memory has caught up (or the track changed)
        return self.current()

    def current(self) -> Best | None:
        """The lower of the memory's best and our own keep, without asking the memory."""
        return lowest(self.known, self.own)

    def kept(self, result: Result) -> None:
        """We queued a keep: it is the best we know until the memory says otherwise."""
        self._moved = True
        self.own = best_from(result)

    def take_moved(self) -> bool:
        """Whether our own keep moved the best since this was last asked."""
        moved, self._moved = self._moved, False
        return moved

    def builds_on_own(self, candidate: Candidate) -> bool:
        """True when ``candidate`` changes the best we just kept (a candidate prepared
        while the baseline ran, say): the best moving to its own parent leaves it current."""
        own = self.own
        return own is not None and candidate.parent_sha256 == own.train_py_sha256
