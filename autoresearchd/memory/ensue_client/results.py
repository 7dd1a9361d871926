"""Result records: stored idempotently by id, read in our shape or the community's.

Our record carries every community field beside ours. A community result (no ``id``,
``track``, ``train_py_sha256`` or ``seed``) reads with its key as id and the org's track.
The ``published/`` marker maps a result id to its key, since the key's slug comes from
the description.
"""

from __future__ import annotations

import json

from autoresearchd.ensue import records
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.kv import KeyValues, Stored
from autoresearchd.memory.ensue_client.rpc import BACKEND, json_object
from autoresearchd.models import Result


def result_text(result: Result) -> str:
    """The record of ``result`` as stored, with the best it was compared with."""
    return json.dumps(records.result_record(result, global_best=_best_then(result)))


def _best_then(result: Result) -> float | None:
    """The best the worker compared ``result`` with, from its ``delta_vs_best``."""
    if result.val_bpb is None or result.delta_vs_best is None:
        return None
    return result.val_bpb - result.delta_vs_best


class Results:
    """The ``results/`` folder of one org."""

    def __init__(self, kv: KeyValues, keyspace: Keyspace) -> None:
        self._kv = kv
        self._keys = keyspace

    async def store(self, result: Result) -> tuple[bool, Result, str]:
        """Store by id: (created, the stored result, its key). A replay returns the original.

        The ``published/`` marker is written after the result, so a crash in between is
        caught by finding our own id at the result key.
        """
        marker_key = self._keys.published(result.id)
        (marker,) = await self._kv.get([marker_key])
        key = json_object(marker.text if marker else None).get("result_key")
        prior = await self.at(key) if isinstance(key, str) else None
        if isinstance(key, str) and prior is not None and prior.id == result.id:
            return False, prior, key
        created, stored, key = await self._create(result)
        await self._kv.create(marker_key, json.dumps({"result_key": key, "result_id": result.id}))
        return created, stored, key

    async def at(self, key: str) -> Result | None:
        """The result stored at ``key``, if any reads as one."""
        (stored,) = await self._kv.get([key])
        return self.read(stored) if stored else None

    def read(self, stored: Stored) -> Result | None:
        tail = self._keys.tail(stored.key, f"{self._keys.root}results/")
        return records.read_result(json_object(stored.text), key=tail, track=self._keys.org_track)

    async def newest(self, track: str | None, limit: int | None) -> list[Result]:
        """Results of ``track`` (every track when None), newest first, ``limit`` at most."""
        found = []
        for stored in await self._kv.read_all(f"{self._keys.root}results/"):
            result = self.read(stored)
            if result is not None and (track is None or result.track == track):
                found.append((result.completed_at, stored.order, result))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [result for _, _, result in found[:limit]]

    async def _create(self, result: Result) -> tuple[bool, Result, str]:
        text, about = result_text(result), records.description_result(result)
        for key in self._keys.results(result):
            if await self._kv.create(key, text, about, embed=True):
                return True, result, key
            prior = await self.at(key)
            if prior is not None and prior.id == result.id:
                return False, prior, key
        raise MemoryBackendError(
            f"result {result.id} collides with another result's key", backend=BACKEND, key=key
        )
