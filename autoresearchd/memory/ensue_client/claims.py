"""Claims of candidates: ours, content-addressed, and the community's, matched by experiment.

``claims/<track>--<sha12>`` is created atomically, with the community's claim fields beside
ours; a released or expired claim is taken over by ``update_memory`` with ``if_match``.
Before claiming, a described candidate is checked against the community's claims and
results, by key and by ``search_memories`` similarity. ``runs/<track>--<sha256>`` marks a
source as run, so ``was_run`` is one read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from autoresearchd.ensue import records
from autoresearchd.ensue.errors import CONFLICT, FORBIDDEN
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.kv import KeyValues
from autoresearchd.memory.ensue_client.rpc import json_object

log = structlog.get_logger(__name__)

CLAIM_ATTEMPTS = 5


class Claims:
    """The ``claims/`` folder of one org, and the ``runs/`` markers beside it."""

    def __init__(self, kv: KeyValues, keyspace: Keyspace, clock: Callable[[], float]) -> None:
        self._kv = kv
        self._keys = keyspace
        self._clock = clock

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        """Claim (track, sha256); with a ``description``, only if no community client holds
        or has run that experiment (see :meth:`community_holds`)."""
        key, now = self._keys.claim(track, sha256), self._clock()
        if description and await self.community_holds(description, now):
            return False
        record = records.claim_record(
            agent_id=agent_id,
            track=track,
            sha256=sha256,
            description=description or f"{track} {sha256[:12]}",
            now=now,
            ttl_s=ttl_s,
        )
        text, about = json.dumps(record), records.description_claim(record["description"])
        for _ in range(CLAIM_ATTEMPTS):
            if await self._kv.create(key, text, about, embed=True):
                return True
            (stored,) = await self._kv.get([key])
            if stored is None:
                continue  # released by deletion between our calls: try to create again
            if not _claim_free_for(json_object(stored.text), track, sha256, agent_id, now):
                return False
            # A hub whose clock says the claim is still live refuses (FORBIDDEN): claim lost.
            if await self._kv.update(key, text, stored.version, lost=(CONFLICT, FORBIDDEN)):
                return stored.version is not None or await self._kv.reads_back(key, text)
        return False

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        key, now = self._keys.claim(track, sha256), self._clock()
        (stored,) = await self._kv.get([key])
        holder = json_object(stored.text) if stored else {}
        if stored is None or not _holds(holder, track, sha256, agent_id, now):
            return
        released = records.released_claim(holder, now)
        await self._kv.write_verified(key, json.dumps(released), stored.version)

    async def community_holds(self, description: str, now: float) -> str | None:
        """The key of a community claim or result of the experiment ``description``, if any.

        Exact: a claim or result whose key ends in the community's ``<slug>--<hash6>`` of
        ``description`` (their keys differ by agent only). Similar: an active claim that
        ``search_memories`` scores at least 0.92 against ``description``, as their client
        checks, or whose description is the same. Claims of our own clients are left to
        the content-addressed claim, so replicates by other agents still run.
        """
        root = self._keys.root
        tails = records.experiment_tails(description)
        exact = [
            key
            for prefix in ("claims/", "results/")
            for key in await self._kv.list_names(root + prefix)
            if self._keys.tail(key, root + prefix).partition("--")[2] in tails
        ]
        for stored in await self._kv.get(exact) if exact else []:
            if stored is None:
                continue
            done = stored.key.startswith(f"{root}results/")
            record = json_object(stored.text)
            held = not records.is_ours(record) and records.claim_is_live(record, now)
            if done or held:
                return _blocked(stored.key, description, "exact")
        for key, score, record in await self._kv.search(description, root + "claims/"):
            if records.is_ours(record) or not records.claim_is_live(record, now):
                continue
            same = records.same_experiment(str(record.get("description", "")), description)
            if same or score >= records.SIMILAR:
                return _blocked(key, description, f"similar {score:.3f}")
        return None

    async def was_run(self, track: str, sha256: str) -> bool:
        runs, claim = await self._kv.get(
            [self._keys.runs(track, sha256), self._keys.claim(track, sha256)]
        )
        if runs is not None:
            return True
        holder = json_object(claim.text) if claim else {}
        return _holds(holder, track, sha256, str(holder.get("agent_id")), self._clock())


def _blocked(key: str, description: str, how: str) -> str:
    log.info("claim_held_by_community", key=key, description=description, match=how)
    return key


def _claim_free_for(
    holder: Mapping[str, Any], track: str, sha: str, agent: str, now: float
) -> bool:
    if holder.get("track") != track or holder.get("sha256") != sha:
        return False  # a different candidate whose key collides: never take it over
    return holder.get("agent_id") == agent or not _holds(
        holder, track, sha, str(holder.get("agent_id")), now
    )


def _holds(holder: Mapping[str, Any], track: str, sha: str, agent: str, now: float) -> bool:
    """True when ``holder`` is a live, unreleased claim on (track, sha) by ``agent``."""
    expires = records.finite(holder.get("expires_at"))
    return (
        holder.get("track") == track
        and holder.get("sha256") == sha
        and holder.get("agent_id") == agent
        and holder.get("released") is not True
        and expires is not None
        and expires > now
    )
