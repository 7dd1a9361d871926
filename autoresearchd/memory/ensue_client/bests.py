"""The shared bests: read (a torn pair repaired), moved by compare-and-set, and their history.

``best/metadata`` + ``best/train_py`` (and ``best/tier/<tier>/…``) hold the best of the
*primary track*; any other track's live under ``tracks/<track>/best/…``, so no track
overwrites another's. A best whose metadata is not confirmed to be of the asked track (it
names another, or it is the community's and the org's track was not configured) is neither
read nor moved. Our metadata carries ``train_py_sha256`` and ``result_key``: a torn pair is
re-read and, if it stays torn, the source comes from the result record; a community one is
checked against the source it carries and hashed. ``best/agent/<agent>`` holds each agent's
own best.

A best moves by compare-and-set: read the pair in one call, compare, write the metadata
with ``if_match``, then the source with ``if_match`` for as long as the metadata still
names us. On a server that returns no versions, the write is read back to verify.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from autoresearchd.ensue import records
from autoresearchd.ensue.errors import NO_SUCH_TOOL
from autoresearchd.errors import TransientMemoryError
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.kv import KeyValues, Stored, WriteOutcome
from autoresearchd.memory.ensue_client.results import Results
from autoresearchd.memory.ensue_client.rpc import BACKEND, json_object
from autoresearchd.memory.protocol import BestChange
from autoresearchd.models import Best, Result, Status

log = structlog.get_logger(__name__)

HISTORY_LIMIT = 1000
#: How often a compare-and-set loop may lose before the call gives up (each loss means
#: someone else made progress, so this bounds only pathological contention).
CAS_ATTEMPTS = 100
TORN_READS = 4


def keep_bpb(result: Result) -> float | None:
    """The finite score a keep moves bests with; None for any other result."""
    bpb = result.best_bpb
    if result.status is not Status.KEEP or bpb is None or not math.isfinite(bpb):
        return None
    return bpb


def best_scopes(result: Result) -> list[tuple[str | None, str]]:
    """The shared bests a keep may move, as (tier, label): the track's, then its tier's."""
    return [(None, "track"), *([(result.vram_tier, result.vram_tier)] * bool(result.vram_tier))]


@dataclass(frozen=True, slots=True)
class _BestMove:
    """A best to set from ``result``: its scope (``tier``, None for the track) and score."""

    result: Result
    result_key: str
    tier: str | None
    bpb: float


class ForeignBests:
    """Which best keys were found to be of another track; each is logged once."""

    def __init__(self, keyspace: Keyspace) -> None:
        self._keys = keyspace
        self._logged: set[str] = set()

    def confirmed(self, key: str, current: Mapping[str, Any], track: str) -> bool:
        """Whether the best at ``key`` is of ``track``; logs once per key when it is not."""
        if records.best_track_confirmed(current, track, self._keys.declared_track):
            return True
        self.found(key, track, current.get("track") or "none named")
        return False

    def found(self, key: str, track: str, found: object) -> None:
        """Log, once per key, a best left alone because it is of another track."""
        if key not in self._logged:
            self._logged.add(key)
            log.warning(
                "best_not_ours",
                key=key,
                track=track,
                found=found,
                hint="set memory.org_track to the org's own track",
            )


class Bests:
    """The bests of one org's tracks (see the module docstring)."""

    def __init__(
        self,
        kv: KeyValues,
        keyspace: Keyspace,
        results: Results,
        foreign: ForeignBests,
        clock: Callable[[], float],
    ) -> None:
        self._kv = kv
        self._keys = keyspace
        self._results = results
        self._foreign = foreign
        self._clock = clock

    async def get(self, track: str, tier: str | None) -> Best | None:
        base = self._keys.best_base(track, tier)
        meta_key, train_key = base + "metadata", base + "train_py"
        record: dict[str, Any] = {}
        for attempt in range(TORN_READS):
            meta, train = await self._kv.get([meta_key, train_key])
            if meta is None:
                return None
            record = json_object(meta.text)
            if not self._foreign.confirmed(meta_key, record, track):
                return None
            if train is not None and train.text is not None:
                best = records.read_best(record, train.text, track, tier)
                if best is not None:
                    return best
            log.debug("best_torn", backend=BACKEND, key=meta_key, attempt=attempt)
            await anyio.sleep(0.02 * 2**attempt)
        return await self._from_result(track, tier, record, meta_key)

    async def _from_result(
        self, track: str, tier: str | None, record: dict[str, Any], meta_key: str
    ) -> Best:
        """A torn pair that stays torn: take the source from the metadata (a community
        record may carry it) or from the result the metadata names."""
        inline = record.get("train_py")
        if isinstance(inline, str) and inline:
            best = records.read_best(record, inline, track, tier)
            if best is not None:
                return best
        result_key = record.get("result_key")
        if isinstance(result_key, str) and result_key:
            result = await self._results.at(self._keys.full(result_key))
            if result is not None and result.train_py_sha256 == record.get("train_py_sha256"):
                best = records.read_best(record, result.train_py, track, tier)
                if best is not None:
                    return best
        raise TransientMemoryError(
            "best/metadata and best/train_py disagree", backend=BACKEND, key=meta_key
        )

    async def history(self, track: str, tier: str | None, limit: int | None) -> list[BestChange]:
        """The hub's audited moves of the best metadata; empty on a server without them."""
        key = self._keys.best_base(track, tier) + "metadata"
        reply = await self._kv.tool(
            "best_history",
            {"key_name": key, "limit": HISTORY_LIMIT if limit is None else limit},
            key=key,
            tolerate=NO_SUCH_TOOL,
        )
        changes = reply.payload.get("changes")
        found = [_change_from(c) for c in changes] if isinstance(changes, list) else []
        return [change for change in found if change is not None]

    async def move(self, result: Result, result_key: str) -> tuple[str, ...]:
        """Move every best a keep beats; the labels (``"track"``, the tier) of those moved."""
        bpb = keep_bpb(result)
        if bpb is None:
            return ()
        moved = []
        for tier, label in best_scopes(result):
            base = self._keys.best_base(result.track, tier)
            best = _BestMove(result, result_key, tier, bpb)
            if await self._move_one(base + "metadata", base + "train_py", best):
                moved.append(label)
        agent_best = _BestMove(result, result_key, None, bpb)
        await self._move_one(self._keys.agent_best(result), None, agent_best)
        return tuple(moved)

    async def _move_one(self, meta_key: str, train_key: str | None, best: _BestMove) -> bool:
        """Compare-and-set the best metadata, then its source; True if we moved it.

        A best whose track is not confirmed to be ours is never moved.
        """
        wanted = [meta_key] if train_key is None else [meta_key, train_key]
        result = best.result
        for _ in range(CAS_ATTEMPTS):
            meta, *train = await self._kv.get(wanted)
            current = json_object(meta.text) if meta else {}
            if not self._foreign.confirmed(meta_key, current, result.track):
                return False
            old = records.finite(current.get("val_bpb"))
            if current.get("result_id") == result.id or (old is not None and not best.bpb < old):
                return False
            full = records.best_record(
                result,
                result_key=best.result_key,
                tier=best.tier,
                bpb=best.bpb,
                now=self._clock(),
                previous=current,
            )
            outcome = await self._kv.contested_write(meta_key, json.dumps(full), meta)
            if outcome is WriteOutcome.REFUSED:
                return False  # the hub's rules: unverified, not replicated yet, ...
            if outcome is WriteOutcome.WON:
                if train_key is not None:
                    await self._put_source(meta_key, train_key, result, train[0])
                return True
        raise TransientMemoryError("the best kept moving under us", backend=BACKEND, key=meta_key)

    async def _put_source(
        self, meta_key: str, train_key: str, result: Result, train: Stored | None
    ) -> None:
        """Write the source for as long as the metadata names ``result``."""
        for _ in range(CAS_ATTEMPTS):
            if train is not None and train.text == result.train_py:
                return
            outcome = await self._kv.contested_write(train_key, result.train_py, train)
            if outcome is not WriteOutcome.LOST:
                return  # written, or refused: the metadata no longer names this source
            meta, train = await self._kv.get([meta_key, train_key])
            if meta is None or json_object(meta.text).get("result_id") != result.id:
                return  # a newer best owns the pair now; its writer sets the source
        raise TransientMemoryError("best/train_py kept moving", backend=BACKEND, key=train_key)


def _change_from(entry: Any) -> BestChange | None:
    """One ``best_history`` entry; None for one without a finite val_bpb (a seeded baseline)."""
    meta = entry.get("metadata") if isinstance(entry, dict) else None
    bpb = records.finite(meta.get("val_bpb")) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or bpb is None:
        return None
    return BestChange(
        at=records.finite(entry.get("at")) or 0.0,
        agent_id=str(meta.get("agent_id") or entry.get("agent") or ""),
        val_bpb=bpb,
        description=str(meta.get("description") or ""),
        train_py_sha256=str(meta.get("train_py_sha256") or ""),
        result_id=str(meta.get("result_id") or ""),
    )
