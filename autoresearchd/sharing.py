"""Sharing what a worker learned: follow-ups to its keeps, and crash insights now and then.

A :class:`Sharing` belongs to one worker. It remembers the worker's latest keep and when it
last looked for insights, and publishes notes to the collective memory; a memory out of
reach costs the notes only, never the run loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog

from autoresearchd.config import Config
from autoresearchd.errors import MemoryBackendError, MutationError
from autoresearchd.hypotheses import crash_insights, follow_up
from autoresearchd.memory.protocol import CollectiveMemory, Note
from autoresearchd.models import Best, Candidate, Result
from autoresearchd.mutation import Param, parse_params

log = structlog.get_logger(__name__)

#: Least seconds between two insight computations of one worker.
INSIGHT_INTERVAL_S = 600.0


class Sharing:
    """One worker's notes to the swarm. ``baseline`` reads the workspace's train.py source."""

    def __init__(self, memory: CollectiveMemory, baseline: Callable[[], str]) -> None:
        self.memory = memory
        self.baseline = baseline
        self._last_keep: Result | None = None
        self._insights_at = 0.0

    def kept(self, result: Result) -> None:
        """Remember a keep, so the next :meth:`share` can follow it up."""
        self._last_keep = result

    async def share(self, config: Config, candidate: Candidate, best: Best | None) -> None:
        """Publish a follow-up hypothesis after a keep, and insights now and then."""
        if not config.proposer.share_notes:
            return
        kept, self._last_keep = self._last_keep, None
        notes: list[tuple[str, Note]] = []
        now = time.time()
        if kept is not None and best is not None and kept.train_py_sha256 == candidate.sha256:
            spaces = self.proposer_spaces()
            note = follow_up(best.train_py, kept, config.daemon.agent, now, spaces)
            notes += [("hypotheses", note)] if note else []
        if now - self._insights_at >= INSIGHT_INTERVAL_S:
            self._insights_at = now
            notes += [("insights", n) for n in await self.insights(config, now)]
        for kind, note in notes:
            await self.put_note(kind, note)

    def proposer_spaces(self) -> dict[str, Param] | None:
        try:
            return parse_params(self.baseline())
        except (OSError, MutationError):
            return None

    async def insights(self, config: Config, now: float) -> list[Note]:
        track = config.experiment.track
        try:
            results = await self.memory.results(track, limit=config.proposer.max_history)
        except MemoryBackendError as exc:
            log.warning("history_unavailable", error=str(exc))
            return []
        if not results:
            return []
        baseline = self.baseline()
        found = await anyio.to_thread.run_sync(
            crash_insights, results, config.daemon.agent, now, baseline
        )
        return list(found)

    async def put_note(self, kind: str, note: Note) -> None:
        try:
            created = await self.memory.put_note(kind, note)
        except MemoryBackendError as exc:
            log.warning("note_unpublished", kind=kind, error=str(exc))
            return
        if created:
            log.info("note_published", kind=kind, key=note.key, title=note.value.get("title"))
