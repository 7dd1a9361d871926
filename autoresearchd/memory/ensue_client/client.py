""":class:`EnsueMemory`: the ``CollectiveMemory`` Protocol over the Ensue protocol.

It builds the parts of the client around one :class:`EnsueRpc` and one
:class:`Keyspace` and hands each call of the Protocol to the part that owns it: claims,
publishing, bests, results, notes. The key layout they share is drawn in the package
docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import httpx
import structlog

from autoresearchd.memory.ensue_client.bests import Bests, ForeignBests
from autoresearchd.memory.ensue_client.claims import Claims
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.kv import KeyValues
from autoresearchd.memory.ensue_client.notes import Notes
from autoresearchd.memory.ensue_client.publishing import Publishing
from autoresearchd.memory.ensue_client.results import Results
from autoresearchd.memory.ensue_client.rpc import (
    BACKEND,
    DEFAULT_ATTEMPTS,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_MIN_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    EnsueRpc,
)
from autoresearchd.memory.protocol import BestChange, Note, PublishOutcome
from autoresearchd.models import Best, Result

log = structlog.get_logger(__name__)


class EnsueMemory:
    """The collective memory over the Ensue protocol (see the package docstring).

    ``primary_track`` is the track whose bests use the community's bare ``best/`` keys;
    ``org_track_declared`` says the operator named it as the org's own track, so the
    community's records (which name no track) are of it; otherwise they are of the track
    named after the org. ``clock`` gives the time for claim expiry and best timestamps.
    """

    def __init__(
        self,
        url: str,
        org: str,
        api_key: str,
        *,
        primary_track: str,
        org_track_declared: bool = False,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        min_backoff_s: float = DEFAULT_MIN_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        keyspace = Keyspace(org, primary_track, org_track_declared=org_track_declared)
        self.url = url
        self.org = org
        self.root = keyspace.root
        self.primary_track = primary_track
        #: The track of records that name none: the community's, the org's own.
        self.org_track = keyspace.org_track
        self._rpc = EnsueRpc(
            url,
            api_key,
            transport=transport,
            timeout_s=timeout_s,
            attempts=attempts,
            min_backoff_s=min_backoff_s,
            max_backoff_s=max_backoff_s,
        )
        self._kv = KeyValues(self._rpc, keyspace)
        results, foreign = Results(self._kv, keyspace), ForeignBests(keyspace)
        self._results = results
        self._bests = Bests(self._kv, keyspace, results, foreign, clock)
        self._publishing = Publishing(self._kv, keyspace, results, self._bests, foreign, clock)
        self._claims = Claims(self._kv, keyspace, clock)
        self._notes = Notes(self._kv, keyspace)

    async def __aenter__(self) -> Self:
        await self._kv.open()
        log.debug("memory_opened", backend=BACKEND, url=self.url, org=self.org)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._kv.close()
        log.debug("memory_closed", backend=BACKEND, url=self.url)

    @property
    def keys(self) -> KeyValues:
        """The raw key-value tools beneath the records: for checks of the key layout
        itself and for load tools, never for the daemon's own reads and writes."""
        return self._kv

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        return await self._claims.claim(track, sha256, agent_id, ttl_s, description)

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        await self._claims.release(track, sha256, agent_id)

    async def community_holds(self, description: str, now: float) -> str | None:
        """The key of a community claim or result of the experiment ``description``, if any."""
        return await self._claims.community_holds(description, now)

    async def was_run(self, track: str, sha256: str) -> bool:
        return await self._claims.was_run(track, sha256)

    async def publish(self, result: Result) -> PublishOutcome:
        return await self._publishing.publish(result)

    async def get_best(self, track: str, tier: str | None = None) -> Best | None:
        return await self._bests.get(track, tier)

    async def best_history(
        self, track: str, tier: str | None = None, limit: int | None = 100
    ) -> list[BestChange]:
        """The hub's audited moves of the best metadata; empty on a server without them."""
        return await self._bests.history(track, tier, limit)

    async def results(self, track: str | None = None, limit: int | None = 100) -> list[Result]:
        return await self._results.newest(track, limit)

    async def put_note(self, kind: str, note: Note) -> bool:
        return await self._notes.put(kind, note)

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        return await self._notes.newest(kind, limit)
