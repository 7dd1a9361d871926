"""Publishing a result: in one ``publish_result`` call on our hub, else by the plain tools.

Our hub stores the result, its ``published/`` and ``runs/`` markers and the bests it moves
in one transaction. A server without that tool (the public network) gets the same writes
one by one: the result by id, the ``runs/`` marker (so ``was_run`` is one read), then each
best by compare-and-set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import structlog

from autoresearchd.ensue import records
from autoresearchd.ensue.errors import NO_SUCH_TOOL
from autoresearchd.ensue.values import encode
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.ensue_client.bests import Bests, ForeignBests, best_scopes, keep_bpb
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.kv import KeyValues
from autoresearchd.memory.ensue_client.results import Results, result_text
from autoresearchd.memory.ensue_client.rpc import BACKEND
from autoresearchd.memory.protocol import PublishOutcome
from autoresearchd.models import Result

log = structlog.get_logger(__name__)


class Publishing:
    """Publishes results to one org; remembers whether the server has ``publish_result``."""

    def __init__(
        self,
        kv: KeyValues,
        keyspace: Keyspace,
        results: Results,
        bests: Bests,
        foreign: ForeignBests,
        clock: Callable[[], float],
    ) -> None:
        self._kv = kv
        self._keys = keyspace
        self._results = results
        self._bests = bests
        self._foreign = foreign
        self._clock = clock
        self._one_call = True  # until the hub says it has no publish_result

    async def publish(self, result: Result) -> PublishOutcome:
        if self._one_call:
            outcome = await self._in_one_call(result)
            if outcome is not None:
                return outcome
        created, stored, key = await self._results.store(result)
        marker = {"result_key": key, "result_id": stored.id, "agent_id": stored.agent_id}
        await self._kv.create(
            self._keys.runs(stored.track, stored.train_py_sha256), json.dumps(marker)
        )
        moved = await self._bests.move(stored, key)
        log.debug(
            "result_stored",
            backend=BACKEND,
            result_id=result.id,
            created=created,
            best_improved=list(moved),
        )
        return PublishOutcome(created=created, best_improved=moved)

    async def _in_one_call(self, result: Result) -> PublishOutcome | None:
        """Publish with our hub's ``publish_result``; None on a hub without it, which then
        gets the plain tools."""
        bests, labels = self._best_items(result)
        published = self._keys.published(result.id)
        arguments = {
            "result": {
                "key_names": list(self._keys.results(result)),
                "value": encode(result_text(result)),
                "base64": True,
                "description": records.description_result(result),
            },
            "markers": self._markers(result, published),
            "bests": bests,
        }
        reply = await self._kv.tool(
            "publish_result", arguments, key=published, tolerate=NO_SUCH_TOOL
        )
        if reply.error_code is not None:
            self._one_call = False
            return None
        payload = reply.payload
        if payload.get("status") != "ok":
            raise MemoryBackendError(
                f"publish_result: {payload.get('error', payload.get('status'))}",
                backend=BACKEND,
                key=published,
            )
        statuses = [b.get("status") if isinstance(b, dict) else None for b in payload["bests"]]
        for item, status in zip(bests, statuses, strict=False):
            if status == "foreign":
                self._foreign.found(item["metadata_key"], result.track, "another track (hub)")
        moved = tuple(
            label
            for label, status in zip(labels, statuses, strict=False)
            if label is not None and status == "moved"
        )
        created = payload.get("created") is True
        log.debug("result_stored", backend=BACKEND, result_id=result.id, created=created)
        return PublishOutcome(created=created, best_improved=moved)

    def _markers(self, result: Result, published: str) -> list[dict[str, Any]]:
        """The ``published/`` and ``runs/`` markers written with the result."""
        marker = {"result_id": result.id}
        runs = self._keys.runs(result.track, result.train_py_sha256)
        return [
            {"key_name": published, "value": encode(json.dumps(marker)), "base64": True},
            {
                "key_name": runs,
                "value": encode(json.dumps({**marker, "agent_id": result.agent_id})),
                "base64": True,
            },
        ]

    def _best_items(self, result: Result) -> tuple[list[dict[str, Any]], list[str | None]]:
        """The bests a keep may move, as ``publish_result`` items, with their labels (None
        for the agent's own best, which is not reported)."""
        bpb = keep_bpb(result)
        if bpb is None:
            return [], []
        # The hub fills in result_key and the previous best's fields on the row it replaces.
        org_track = self._keys.declared_track == result.track
        bests: list[dict[str, Any]] = []
        labels: list[str | None] = []
        for tier, label in best_scopes(result):
            base = self._keys.best_base(result.track, tier)
            best = self._batched_best(result, tier, bpb)
            bests.append(
                {
                    "metadata_key": base + "metadata",
                    "value": encode(json.dumps(best)),
                    "base64": True,
                    "train_py_key": base + "train_py",
                    "train_py": encode(result.train_py),
                    "org_track": org_track,
                }
            )
            labels.append(label)
        best = self._batched_best(result, None, bpb)
        bests.append(
            {
                "metadata_key": self._keys.agent_best(result),
                "value": encode(json.dumps(best)),
                "base64": True,
                "org_track": org_track,
            }
        )
        labels.append(None)
        return bests, labels

    def _batched_best(self, result: Result, tier: str | None, bpb: float) -> dict[str, Any]:
        """A best's metadata for ``publish_result``, as the plain path writes it."""
        return records.best_record(
            result, result_key="", tier=tier, bpb=bpb, now=self._clock(), previous={}
        )
