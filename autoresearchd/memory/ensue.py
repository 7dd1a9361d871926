"""The network collective memory: the Ensue JSON-RPC protocol, to the public network or our hub.

:class:`EnsueRpc` is the wire: one pooled ``httpx.AsyncClient``, a timeout on every call,
``tools/call`` bodies, base64 values, replies with or without an SSE ``data:`` prefix.
Transport errors, 5xx and 429 are retried a few times with jittered, capped exponential
backoff (``min·2^n`` capped, times U(0.5, 1), at least ``Retry-After``) and then become
:class:`TransientMemoryError`, so the publisher's outbox does the long-term retrying.
Everything else becomes :class:`MemoryBackendError` naming the tool and key.

The key layout is :mod:`autoresearchd.ensue.keys`'s and every record is written and
read by :mod:`autoresearchd.ensue.records`, so community clients (autoresearch-at-home)
read what we write and we read theirs. :class:`EnsueMemory` maps the
``CollectiveMemory`` Protocol onto it under ``@<org>/``:

- ``results/<agent>--<slug>--<id6>``: our result with every community field; ``id6``
  hashes the result id, so a replay hits the same key. A community result (no ``id``,
  ``track``, ``train_py_sha256`` or ``seed``) reads with its key as id and the org's track.
- ``claims/<track>--<sha12>``: created atomically, with the community's claim fields
  beside ours; a released or expired claim is taken over by ``update_memory`` with
  ``if_match``. Before claiming, a described candidate is checked against the
  community's claims and results, by key and by ``search_memories`` similarity.
- ``runs/<track>--<sha256>``: a marker written with each result, so ``was_run`` is one read;
  ``published/<id>--<id6>`` maps a result id to its key, so a replay is found by id.
- ``best/metadata`` + ``best/train_py``, ``best/tier/<tier>/…``: the best of the
  *primary track* (``memory.org_track``, else ``experiment.track``); any other track's
  live under ``tracks/<track>/best/…``, so no track overwrites another's. A best whose
  metadata is not confirmed to be of the asked track (it names another, or it is the
  community's and the org's track was not configured) is neither read nor moved. Our
  metadata carries ``train_py_sha256`` and ``result_key``: a torn pair is re-read and, if it
  stays torn, the source comes from the result record; a community one is checked against
  the source it carries and hashed. ``best/agent/<agent>`` holds each agent's own best.
- ``hypotheses/<key>`` and ``insights/<key>``: community fields at the top level, ours
  (``key``, ``value``) beside them.

Records, claims and notes are created with ``embed: true`` and a description in the
community's words, so their agents find ours by search. A server may report a key that
exists per item or as a tool error (``isError``); both read as "exists".

A best moves by compare-and-set: read the pair in one call, compare, write the metadata
with ``if_match``, then the source with ``if_match`` for as long as the metadata still
names us. On a server that returns no versions (no ``if_match``), the client reads,
compares, writes and then reads back to verify. ``results`` and ``notes`` list their
whole namespace, which suits swarms of up to some thousands of records.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from autoresearchd.backoff import jittered_wait
from autoresearchd.ensue import keys, records
from autoresearchd.ensue.envelope import Reply
from autoresearchd.ensue.envelope import parse_message as parse_reply
from autoresearchd.ensue.envelope import read_reply as _payload
from autoresearchd.ensue.errors import CONFLICT, FORBIDDEN, NO_SUCH_TOOL
from autoresearchd.ensue.keys import short_hash as _short_hash
from autoresearchd.ensue.keys import slug
from autoresearchd.ensue.values import decode as _decode
from autoresearchd.ensue.values import encode as _encode
from autoresearchd.errors import ConfigError, MemoryBackendError, TransientMemoryError
from autoresearchd.fsutil import write_atomically
from autoresearchd.memory.protocol import BestChange, Note, PublishOutcome
from autoresearchd.models import Best, Result, Status

log = structlog.get_logger(__name__)

BACKEND = "ensue"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_MIN_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 2.0
NOTE_KINDS = ("hypotheses", "insights")
GET_BATCH = 100
LIST_LIMIT = 10_000
HISTORY_LIMIT = 1000
#: How often a compare-and-set loop may lose before the call gives up (each loss means
#: someone else made progress, so this bounds only pathological contention).
SEARCH_LIMIT = 5
CAS_ATTEMPTS = 100
CLAIM_ATTEMPTS = 5
TORN_READS = 4


# --- the wire ------------------------------------------------------------------------------


def _retry_hint(state: RetryCallState) -> float | None:
    exc = state.outcome.exception() if state.outcome else None
    return exc.retry_after if isinstance(exc, TransientMemoryError) else None


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "memory_retry",
        backend=BACKEND,
        attempt=state.attempt_number,
        delay_s=round(delay, 3),
        error=str(exc),
    )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class EnsueRpc:
    """One pooled connection to an Ensue endpoint, with timeouts and short retries."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        min_backoff_s: float = DEFAULT_MIN_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
    ) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._transport = transport
        self._timeout = httpx.Timeout(timeout_s)
        self._attempts = attempts
        self._max_backoff_s = max_backoff_s
        self._wait = jittered_wait(min_backoff_s, max_backoff_s)
        self._ids = itertools.count(1)
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        self._client = httpx.AsyncClient(
            transport=self._transport, timeout=self._timeout, headers=self._headers
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _stop(self, state: RetryCallState) -> bool:
        hint = _retry_hint(state)
        # A server asking for a long pause is better served by the outbox than by waiting.
        return state.attempt_number >= self._attempts or (hint or 0.0) > self._max_backoff_s

    async def call(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        key: str = "",
        tolerate: tuple[int, ...] = (),
    ) -> Reply:
        """Call ``tool``; a JSON-RPC error is returned only if its code is in ``tolerate``."""
        body = {
            "jsonrpc": "2.0",
            "method": "tools/call",
            "params": {"name": tool, "arguments": dict(arguments)},
            "id": next(self._ids),
        }
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientMemoryError),
            wait=self._wait,
            stop=self._stop,
            before_sleep=_log_retry,
            reraise=True,
        )
        reply: Reply = await retrying(self._post, tool, body, key)
        if reply.error_code is not None and reply.error_code not in tolerate:
            raise MemoryBackendError(
                f"{tool} failed: {reply.error_message or reply.error_code}",
                backend=BACKEND,
                key=key,
            )
        return reply

    async def _post(self, tool: str, body: dict[str, Any], key: str) -> Reply:
        if self._client is None:
            raise MemoryBackendError("the memory is not open; use it inside 'async with'")
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TransportError as exc:
            raise TransientMemoryError(
                f"{tool}: cannot reach {self.url}: {type(exc).__name__}", backend=BACKEND, key=key
            ) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientMemoryError(
                f"{tool}: {self.url} answered {response.status_code}",
                backend=BACKEND,
                key=key,
                retry_after=_retry_after(response),
            )
        return self._read(tool, response, key)

    def _read(self, tool: str, response: httpx.Response, key: str) -> Reply:
        if response.status_code in (401, 403):
            raise MemoryBackendError(
                f"{tool}: {self.url} refused the API key ({response.status_code}); "
                "check memory.api_key_file",
                backend=BACKEND,
                key=key,
            )
        try:
            reply = _payload(parse_reply(response.text))
        except ValueError as exc:
            raise MemoryBackendError(
                f"{tool}: malformed reply from {self.url} ({response.status_code}): {exc}",
                backend=BACKEND,
                key=key,
            ) from None
        if response.status_code >= 400 and reply.error_code is None:
            raise MemoryBackendError(
                f"{tool}: {self.url} answered {response.status_code}", backend=BACKEND, key=key
            )
        return reply


# --- key layout and records ----------------------------------------------------------------


def _json(text: str | None) -> dict[str, Any]:
    try:
        record = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True, slots=True)
class Stored:
    """One key as read: its text (None if binary) and version (None if the server has none)."""

    key: str
    text: str | None
    version: int | None
    order: int = 0


# --- the backend ---------------------------------------------------------------------------


class Write(enum.Enum):
    """How a write of a contested key went."""

    WON = 1
    LOST = 2  # someone else wrote first
    REFUSED = 3  # the hub's write rules said no


class MemoryState(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class EnsueMemory:
    """The collective memory over the Ensue protocol (see the module docstring).

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
        self.url = url
        self.org = org
        self.root = f"@{org}/"
        self.primary_track = primary_track
        #: The track of records that name none: the community's, the org's own.
        self.org_track = primary_track if org_track_declared else org
        self._clock = clock
        self._foreign_bests: set[str] = set()  # best keys already logged as not ours
        self._rpc = EnsueRpc(
            url,
            api_key,
            transport=transport,
            timeout_s=timeout_s,
            attempts=attempts,
            min_backoff_s=min_backoff_s,
            max_backoff_s=max_backoff_s,
        )
        self._state = MemoryState.UNOPENED
        self._one_call_publish = True  # until the hub says it has no publish_result

    async def __aenter__(self) -> Self:
        if self._state is not MemoryState.UNOPENED:
            raise MemoryBackendError(
                f"cannot open a memory that is {self._state.name.lower()}", backend=BACKEND
            )
        await self._rpc.open()
        self._state = MemoryState.OPENED
        log.debug("memory_opened", backend=BACKEND, url=self.url, org=self.org)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = MemoryState.CLOSED
        await self._rpc.close()
        log.debug("memory_closed", backend=BACKEND, url=self.url)

    # --- keys ------------------------------------------------------------------------------

    def _best_base(self, track: str, tier: str | None) -> str:
        return self.root + keys.best_base(track, self.primary_track, tier)

    def _claim_key(self, track: str, sha256: str) -> str:
        return f"{self.root}claims/{slug(track)}--{slug(sha256, 64)[:12]}"

    def _runs_key(self, track: str, sha256: str) -> str:
        return f"{self.root}runs/{slug(track)}--{slug(sha256, 64)}"

    def _result_keys(self, result: Result) -> tuple[str, str]:
        head = f"{self.root}results/{slug(result.agent_id)}--{slug(result.description)}--"
        return head + _short_hash(result.id, 6), head + _short_hash(result.id, 16)

    def _note_key(self, kind: str, key: str) -> str:
        safe = re.fullmatch(r"[A-Za-z0-9._~-]{1,200}", key)
        return f"{self.root}{kind}/{key if safe else slug(key) + '--' + _short_hash(key, 6)}"

    # --- primitives ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is not MemoryState.OPENED:
            raise MemoryBackendError(
                f"memory is {self._state.name.lower()}; use it inside 'async with'",
                backend=BACKEND,
            )

    async def _create(
        self, key: str, text: str, description: str = "", *, embed: bool = False
    ) -> bool:
        """Create-if-absent; False when the key exists.

        ``embed`` asks the server to index ``description`` for search, as community
        clients do with theirs, so their agents find the record.
        """
        outcome = await self._create_outcome(key, text, description, embed=embed)
        if outcome is Write.REFUSED:
            raise MemoryBackendError("the hub refused to create the key", backend=BACKEND, key=key)
        return outcome is Write.WON

    async def _create_outcome(
        self, key: str, text: str, description: str = "", *, embed: bool = False
    ) -> Write:
        """Create-if-absent: WON, LOST (the key exists) or REFUSED (by the hub's rules).

        A server may report an existing key per item or as a tool error (``isError``);
        both read as LOST.
        """
        self._check_open()
        item: dict[str, Any] = {"key_name": key, "description": description}
        item |= {"value": _encode(text), "base64": True}
        if embed:
            item |= {"embed": True, "embed_source": "description"}
        reply = await self._rpc.call(
            "create_memory", {"items": [item]}, key=key, tolerate=(CONFLICT, FORBIDDEN)
        )
        if reply.error_code == FORBIDDEN:
            log.info("write_refused", backend=BACKEND, key=key, reason=reply.error_message)
            return Write.REFUSED
        if reply.error_code is not None:
            return Write.LOST
        results = reply.payload.get("results")
        entry = results[0] if isinstance(results, list) and results else {}
        status = str(entry.get("status", "created")) if isinstance(entry, dict) else ""
        if status in ("created", "ok", "success"):
            return Write.WON
        detail = json.dumps(entry)[:200]
        if isinstance(entry, dict) and entry.get("code") == "refused":
            log.info("write_refused", backend=BACKEND, key=key, reason=entry.get("error"))
            return Write.REFUSED
        if "exist" in detail:
            return Write.LOST
        raise MemoryBackendError(f"create_memory failed: {detail}", backend=BACKEND, key=key)

    def _full(self, name: str) -> str:
        """A key name from a reply as a full name: community servers answer org-relative."""
        return keys.full_name(self.org, name)

    def _tail(self, key: str, prefix: str) -> str:
        """What follows ``prefix`` (a full-name folder) in ``key``."""
        return key[len(prefix) :] if key.startswith(prefix) else key

    async def _get(self, names: Sequence[str]) -> list[Stored | None]:
        """The keys ``names``, read in one call per batch, in the order asked."""
        self._check_open()
        found: dict[str, Stored] = {}
        for start in range(0, len(names), GET_BATCH):
            batch = list(names[start : start + GET_BATCH])
            reply = await self._rpc.call("get_memory", {"key_names": batch}, key=batch[0])
            for stored in _stored_entries(reply.payload).values():
                name = self._full(stored.key)
                found[name] = Stored(name, stored.text, stored.version)
        return [found.get(key) for key in names]

    async def _update(
        self, key: str, text: str, version: int | None, *, lost: tuple[int, ...] = (CONFLICT,)
    ) -> bool:
        """Write ``key``; with a version, compare-and-set: False when someone wrote first.

        ``lost`` lists the error codes that mean "someone else won" rather than a fault.
        """
        arguments: dict[str, Any] = {"key_name": key, "value": _encode(text), "base64": True}
        if version is not None:
            arguments["if_match"] = version
        reply = await self._rpc.call("update_memory", arguments, key=key, tolerate=lost)
        return reply.error_code is None

    async def _best_write(self, key: str, text: str, stored: Stored | None) -> Write:
        """Write a best key by compare-and-set (a create when absent); the hub may refuse."""
        if stored is None:
            return await self._create_outcome(key, text)
        if stored.version is None:
            won = await self._write_verified(key, text, None)
            return Write.WON if won else Write.LOST
        arguments = {"key_name": key, "value": _encode(text), "base64": True}
        reply = await self._rpc.call(
            "update_memory",
            {**arguments, "if_match": stored.version},
            key=key,
            tolerate=(CONFLICT, FORBIDDEN),
        )
        if reply.error_code == FORBIDDEN:
            log.info("write_refused", backend=BACKEND, key=key, reason=reply.error_message)
            return Write.REFUSED
        return Write.LOST if reply.error_code is not None else Write.WON

    async def _write_verified(self, key: str, text: str, version: int | None) -> bool:
        """Compare-and-set where the server has versions; else write, then read back."""
        if version is not None:
            return await self._update(key, text, version)
        await self._update(key, text, None)
        return await self._reads_back(key, text)

    async def _reads_back(self, key: str, text: str) -> bool:
        (again,) = await self._get([key])
        return again is not None and again.text == text

    async def _list(self, prefix: str) -> list[str]:
        self._check_open()
        reply = await self._rpc.call(
            "list_keys", {"prefix": prefix, "limit": LIST_LIMIT}, key=prefix
        )
        listed = reply.payload.get("keys", reply.payload.get("results", []))
        names = [k.get("key_name") if isinstance(k, dict) else k for k in listed or []]
        return [self._full(name) for name in names if isinstance(name, str)]

    async def _read_all(self, prefix: str) -> list[Stored]:
        names = await self._list(prefix)
        stored = await self._get(names)
        return [
            Stored(s.key, s.text, s.version, order)
            for order, s in enumerate(stored)
            if s is not None
        ]

    # --- claims ----------------------------------------------------------------------------

    async def claim(
        self, track: str, sha256: str, agent_id: str, ttl_s: float, description: str = ""
    ) -> bool:
        """Claim (track, sha256); with a ``description``, only if no community client holds
        or has run that experiment (see :meth:`community_holds`)."""
        key, now = self._claim_key(track, sha256), self._clock()
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
            if await self._create(key, text, about, embed=True):
                return True
            (stored,) = await self._get([key])
            if stored is None:
                continue  # released by deletion between our calls: try to create again
            if not _claim_free_for(_json(stored.text), track, sha256, agent_id, now):
                return False
            # A hub whose clock says the claim is still live refuses (FORBIDDEN): claim lost.
            if await self._update(key, text, stored.version, lost=(CONFLICT, FORBIDDEN)):
                return stored.version is not None or await self._reads_back(key, text)
        return False

    async def release(self, track: str, sha256: str, agent_id: str) -> None:
        key, now = self._claim_key(track, sha256), self._clock()
        (stored,) = await self._get([key])
        holder = _json(stored.text) if stored else {}
        if stored is None or not _holds(holder, track, sha256, agent_id, now):
            return
        released = records.released_claim(holder, now)
        await self._write_verified(key, json.dumps(released), stored.version)

    async def community_holds(self, description: str, now: float) -> str | None:
        """The key of a community claim or result of the experiment ``description``, if any.

        Exact: a claim or result whose key ends in the community's ``<slug>--<hash6>`` of
        ``description`` (their keys differ by agent only). Similar: an active claim that
        ``search_memories`` scores at least 0.92 against ``description``, as their client
        checks, or whose description is the same. Claims of our own clients are left to
        the content-addressed claim, so replicates by other agents still run.
        """
        tails = records.experiment_tails(description)
        exact = [
            key
            for prefix in ("claims/", "results/")
            for key in await self._list(self.root + prefix)
            if self._tail(key, self.root + prefix).partition("--")[2] in tails
        ]
        for stored in await self._get(exact) if exact else []:
            if stored is None:
                continue
            done = stored.key.startswith(f"{self.root}results/")
            record = _json(stored.text)
            held = not records.is_ours(record) and records.claim_is_live(record, now)
            if done or held:
                return self._blocked(stored.key, description, "exact")
        for key, score, record in await self._search(description, self.root + "claims/"):
            if records.is_ours(record) or not records.claim_is_live(record, now):
                continue
            same = records.same_experiment(str(record.get("description", "")), description)
            if same or score >= records.SIMILAR:
                return self._blocked(key, description, f"similar {score:.3f}")
        return None

    def _blocked(self, key: str, description: str, how: str) -> str:
        log.info("claim_held_by_community", key=key, description=description, match=how)
        return key

    async def _search(self, query: str, prefix: str) -> list[tuple[str, float, dict[str, Any]]]:
        """``search_memories`` hits as (key, score, record); none from a server without it."""
        self._check_open()
        reply = await self._rpc.call(
            "search_memories",
            {"query": query, "prefix": prefix, "limit": SEARCH_LIMIT},
            key=prefix,
            tolerate=NO_SUCH_TOOL,
        )
        hits = reply.payload.get("results")
        found = []
        for hit in hits if isinstance(hits, list) else []:
            if not isinstance(hit, dict) or not isinstance(hit.get("key_name"), str):
                continue
            score = _finite(hit.get("score")) or 0.0
            text = _decode(hit.get("value"), hit.get("base64"))
            found.append((self._full(hit["key_name"]), score, _json(text)))
        return found

    async def was_run(self, track: str, sha256: str) -> bool:
        runs, claim = await self._get(
            [self._runs_key(track, sha256), self._claim_key(track, sha256)]
        )
        if runs is not None:
            return True
        holder = _json(claim.text) if claim else {}
        return _holds(holder, track, sha256, str(holder.get("agent_id")), self._clock())

    # --- results and bests -----------------------------------------------------------------

    async def publish(self, result: Result) -> PublishOutcome:
        if self._one_call_publish:
            outcome = await self._publish_in_one_call(result)
            if outcome is not None:
                return outcome
        created, stored, key = await self._store_result(result)
        marker = {"result_key": key, "result_id": stored.id, "agent_id": stored.agent_id}
        await self._create(self._runs_key(stored.track, stored.train_py_sha256), json.dumps(marker))
        moved = await self._move_bests(stored, key)
        log.debug(
            "result_stored",
            backend=BACKEND,
            result_id=result.id,
            created=created,
            best_improved=list(moved),
        )
        return PublishOutcome(created=created, best_improved=moved)

    async def _publish_in_one_call(self, result: Result) -> PublishOutcome | None:
        """Publish with our hub's ``publish_result`` (the result, its markers and the bests
        in one transaction); None on a hub without it, which then gets the plain tools."""
        record = json.dumps(records.result_record(result, global_best=_best_then(result)))
        marker = {"result_id": result.id}
        bests: list[dict[str, Any]] = []
        labels: list[str | None] = []
        bpb = _keep_bpb(result)
        # The hub fills in result_key and the previous best's fields on the row it replaces.
        org_track = self._declared_track == result.track
        if bpb is not None:
            for tier, label in _best_scopes(result):
                base = self._best_base(result.track, tier)
                best = self._batched_best(result, tier, bpb)
                bests.append(
                    {
                        "metadata_key": base + "metadata",
                        "value": _encode(json.dumps(best)),
                        "base64": True,
                        "train_py_key": base + "train_py",
                        "train_py": _encode(result.train_py),
                        "org_track": org_track,
                    }
                )
                labels.append(label)
            best = self._batched_best(result, None, bpb)
            bests.append(
                {
                    "metadata_key": self._agent_best_key(result),
                    "value": _encode(json.dumps(best)),
                    "base64": True,
                    "org_track": org_track,
                }
            )
            labels.append(None)
        published = f"{self.root}published/{slug(result.id)}--{_short_hash(result.id, 6)}"
        runs = self._runs_key(result.track, result.train_py_sha256)
        arguments = {
            "result": {
                "key_names": list(self._result_keys(result)),
                "value": _encode(record),
                "base64": True,
                "description": records.description_result(result),
            },
            "markers": [
                {"key_name": published, "value": _encode(json.dumps(marker)), "base64": True},
                {
                    "key_name": runs,
                    "value": _encode(json.dumps({**marker, "agent_id": result.agent_id})),
                    "base64": True,
                },
            ],
            "bests": bests,
        }
        self._check_open()
        reply = await self._rpc.call(
            "publish_result", arguments, key=published, tolerate=NO_SUCH_TOOL
        )
        if reply.error_code is not None:
            self._one_call_publish = False
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
                self._foreign(item["metadata_key"], result.track, "another track (hub)")
        moved = tuple(
            label
            for label, status in zip(labels, statuses, strict=False)
            if label is not None and status == "moved"
        )
        created = payload.get("created") is True
        log.debug("result_stored", backend=BACKEND, result_id=result.id, created=created)
        return PublishOutcome(created=created, best_improved=moved)

    def _batched_best(self, result: Result, tier: str | None, bpb: float) -> dict[str, Any]:
        """A best's metadata for ``publish_result``, as the plain path writes it."""
        return records.best_record(
            result, result_key="", tier=tier, bpb=bpb, now=self._clock(), previous={}
        )

    async def _store_result(self, result: Result) -> tuple[bool, Result, str]:
        """Store by id: (created, the stored result, its key). A replay returns the original.

        The ``published/`` marker maps the id to the key, since the key's slug comes from
        the description; it is written after the result, so a crash in between is caught
        by finding our own id at the result key.
        """
        marker_key = f"{self.root}published/{slug(result.id)}--{_short_hash(result.id, 6)}"
        (marker,) = await self._get([marker_key])
        key = _json(marker.text if marker else None).get("result_key")
        prior = await self._result_at(key) if isinstance(key, str) else None
        if isinstance(key, str) and prior is not None and prior.id == result.id:
            return False, prior, key
        created, stored, key = await self._create_result(result)
        await self._create(marker_key, json.dumps({"result_key": key, "result_id": result.id}))
        return created, stored, key

    async def _result_at(self, key: str) -> Result | None:
        (stored,) = await self._get([key])
        return self._result_from(stored) if stored else None

    def _result_from(self, stored: Stored) -> Result | None:
        tail = self._tail(stored.key, f"{self.root}results/")
        return records.read_result(_json(stored.text), key=tail, track=self.org_track)

    async def _create_result(self, result: Result) -> tuple[bool, Result, str]:
        text = json.dumps(records.result_record(result, global_best=_best_then(result)))
        about = records.description_result(result)
        for key in self._result_keys(result):
            if await self._create(key, text, about, embed=True):
                return True, result, key
            prior = await self._result_at(key)
            if prior is not None and prior.id == result.id:
                return False, prior, key
        raise MemoryBackendError(
            f"result {result.id} collides with another result's key", backend=BACKEND, key=key
        )

    async def _move_bests(self, result: Result, result_key: str) -> tuple[str, ...]:
        bpb = _keep_bpb(result)
        if bpb is None:
            return ()
        moved = []
        for tier, label in _best_scopes(result):
            base = self._best_base(result.track, tier)
            best = _BestMove(result, result_key, tier, bpb)
            if await self._move_best(base + "metadata", base + "train_py", best):
                moved.append(label)
        agent_best = _BestMove(result, result_key, None, bpb)
        await self._move_best(self._agent_best_key(result), None, agent_best)
        return tuple(moved)

    def _agent_best_key(self, result: Result) -> str:
        return self.root + keys.agent_best(slug(result.agent_id), result.track, self.primary_track)

    @property
    def _declared_track(self) -> str | None:
        """The track the operator declared the org's own (whose bests name no track), if any."""
        return self.org_track if self.org_track == self.primary_track else None

    def _track_confirmed(self, key: str, current: Mapping[str, Any], track: str) -> bool:
        """Whether the best at ``key`` is of ``track``; logs once per key when it is not."""
        if records.best_track_confirmed(current, track, self._declared_track):
            return True
        self._foreign(key, track, current.get("track") or "none named")
        return False

    def _foreign(self, key: str, track: str, found: object) -> None:
        """Log, once per key, a best left alone because it is of another track."""
        if key not in self._foreign_bests:
            self._foreign_bests.add(key)
            log.warning(
                "best_not_ours",
                key=key,
                track=track,
                found=found,
                hint="set memory.org_track to the org's own track",
            )

    async def _move_best(self, meta_key: str, train_key: str | None, best: _BestMove) -> bool:
        """Compare-and-set the best metadata, then its source; True if we moved it.

        A best whose track is not confirmed to be ours is never moved.
        """
        wanted = [meta_key] if train_key is None else [meta_key, train_key]
        result = best.result
        for _ in range(CAS_ATTEMPTS):
            meta, *train = await self._get(wanted)
            current = _json(meta.text) if meta else {}
            if not self._track_confirmed(meta_key, current, result.track):
                return False
            old = _finite(current.get("val_bpb"))
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
            outcome = await self._best_write(meta_key, json.dumps(full), meta)
            if outcome is Write.REFUSED:
                return False  # the hub's rules: unverified, not replicated yet, ...
            if outcome is Write.WON:
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
            outcome = await self._best_write(train_key, result.train_py, train)
            if outcome is not Write.LOST:
                return  # written, or refused: the metadata no longer names this source
            meta, train = await self._get([meta_key, train_key])
            if meta is None or _json(meta.text).get("result_id") != result.id:
                return  # a newer best owns the pair now; its writer sets the source
        raise TransientMemoryError("best/train_py kept moving", backend=BACKEND, key=train_key)

    async def get_best(self, track: str, tier: str | None = None) -> Best | None:
        base = self._best_base(track, tier)
        meta_key, train_key = base + "metadata", base + "train_py"
        record: dict[str, Any] = {}
        for attempt in range(TORN_READS):
            meta, train = await self._get([meta_key, train_key])
            if meta is None:
                return None
            record = _json(meta.text)
            if not self._track_confirmed(meta_key, record, track):
                return None
            if train is not None and train.text is not None:
                best = records.read_best(record, train.text, track, tier)
                if best is not None:
                    return best
            log.debug("best_torn", backend=BACKEND, key=meta_key, attempt=attempt)
            await anyio.sleep(0.02 * 2**attempt)
        return await self._best_from_result(track, tier, record, meta_key)

    async def _best_from_result(
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
            result = await self._result_at(self._full(result_key))
            if result is not None and result.train_py_sha256 == record.get("train_py_sha256"):
                best = records.read_best(record, result.train_py, track, tier)
                if best is not None:
                    return best
        raise TransientMemoryError(
            "best/metadata and best/train_py disagree", backend=BACKEND, key=meta_key
        )

    async def best_history(
        self, track: str, tier: str | None = None, limit: int | None = 100
    ) -> list[BestChange]:
        """The hub's audited moves of the best metadata; empty on a server without them."""
        self._check_open()
        key = self._best_base(track, tier) + "metadata"
        reply = await self._rpc.call(
            "best_history",
            {"key_name": key, "limit": HISTORY_LIMIT if limit is None else limit},
            key=key,
            tolerate=NO_SUCH_TOOL,
        )
        changes = reply.payload.get("changes")
        found = [_change_from(c) for c in changes] if isinstance(changes, list) else []
        return [change for change in found if change is not None]

    async def results(self, track: str | None = None, limit: int | None = 100) -> list[Result]:
        found = []
        for stored in await self._read_all(f"{self.root}results/"):
            result = self._result_from(stored)
            if result is not None and (track is None or result.track == track):
                found.append((result.completed_at, stored.order, result))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [result for _, _, result in found[:limit]]

    # --- notes -----------------------------------------------------------------------------

    async def put_note(self, kind: str, note: Note) -> bool:
        _check_kind(kind)
        record = records.note_record(
            kind, records.NoteFields(note.key, note.agent_id, note.value, note.created_at)
        )
        text, about = json.dumps(record), records.description_note(kind, record)
        return await self._create(self._note_key(kind, note.key), text, about, embed=True)

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        _check_kind(kind)
        found = []
        folder = f"{self.root}{kind}/"
        for stored in await self._read_all(folder):
            tail = self._tail(stored.key, folder)
            fields = records.read_note(_json(stored.text), key=tail, track=self.org_track)
            if fields is not None:
                note = Note(*fields)
                found.append((note.created_at, stored.order, note))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [note for _, _, note in found[:limit]]


# --- record helpers ------------------------------------------------------------------------


def _stored_entries(payload: Mapping[str, Any]) -> dict[str, Stored]:
    entries = payload.get("results", [])
    found = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("key_name"), str):
            continue
        if entry.get("status", "ok") not in ("ok", "found", "success") or "value" not in entry:
            continue
        version = entry.get("version")
        text = _decode(entry.get("value"), entry.get("base64"))
        found[entry["key_name"]] = Stored(
            entry["key_name"], text, version if isinstance(version, int) else None
        )
    return found


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
    expires = _finite(holder.get("expires_at"))
    return (
        holder.get("track") == track
        and holder.get("sha256") == sha
        and holder.get("agent_id") == agent
        and holder.get("released") is not True
        and expires is not None
        and expires > now
    )


def _change_from(entry: Any) -> BestChange | None:
    """One ``best_history`` entry; None for one without a finite val_bpb (a seeded baseline)."""
    meta = entry.get("metadata") if isinstance(entry, dict) else None
    bpb = _finite(meta.get("val_bpb")) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or bpb is None:
        return None
    return BestChange(
        at=_finite(entry.get("at")) or 0.0,
        agent_id=str(meta.get("agent_id") or entry.get("agent") or ""),
        val_bpb=bpb,
        description=str(meta.get("description") or ""),
        train_py_sha256=str(meta.get("train_py_sha256") or ""),
        result_id=str(meta.get("result_id") or ""),
    )


@dataclass(frozen=True, slots=True)
class _BestMove:
    """A best to set from ``result``: its scope (``tier``, None for the track) and score."""

    result: Result
    result_key: str
    tier: str | None
    bpb: float


def _keep_bpb(result: Result) -> float | None:
    """The finite score a keep moves bests with; None for any other result."""
    bpb = result.best_bpb
    if result.status is not Status.KEEP or bpb is None or not math.isfinite(bpb):
        return None
    return bpb


def _best_scopes(result: Result) -> list[tuple[str | None, str]]:
    """The shared bests a keep may move, as (tier, label): the track's, then its tier's."""
    return [(None, "track"), *([(result.vram_tier, result.vram_tier)] * bool(result.vram_tier))]


def _best_then(result: Result) -> float | None:
    """The best the worker compared ``result`` with, from its ``delta_vs_best``."""
    if result.val_bpb is None or result.delta_vs_best is None:
        return None
    return result.val_bpb - result.delta_vs_best


def _check_kind(kind: str) -> None:
    if kind not in NOTE_KINDS:
        expected = " or ".join(NOTE_KINDS)
        raise MemoryBackendError(f"unknown note kind {kind!r}; expected {expected}", key=kind)


# --- identity: registration, whoami and the key file ---------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    """A hub's answer to a registration. ``claim_url`` is set only by hubs that send no mail."""

    agent: str
    api_key: str = field(repr=False)
    message: str = ""
    claim_url: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key belongs to, as the hub sees it."""

    agent: str
    verified: bool
    admin: bool = False


def auth_url(url: str, route: str) -> str:
    """``/auth/<route>`` beside the JSON-RPC endpoint ``url`` (which may end in ``/mcp``)."""
    parts = urlsplit(url)
    base = parts.path.rsplit("/", 1)[0] if not parts.path.endswith("/") else parts.path[:-1]
    if base.endswith("/mcp"):
        base = base[: -len("/mcp")]
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/auth/{route}", "", ""))


async def register_agent(
    url: str,
    name: str,
    email: str | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Registration:
    """Register ``name`` at the hub behind ``url``; the hub mails ``email`` a link."""
    body: dict[str, str] = {"name": name} | ({"email": email} if email else {})
    register_url = auth_url(url, "agent-register")
    reply = await _auth_call("POST", register_url, body, None, transport, timeout_s)
    api_key = reply.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise MemoryBackendError("the registration reply carries no api_key", backend=BACKEND)
    claim_url = reply.get("claim_url")
    return Registration(
        agent=name,
        api_key=api_key,
        message=str(reply.get("message", "")),
        claim_url=claim_url if isinstance(claim_url, str) else "",
    )


async def whoami(
    url: str,
    api_key: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Identity:
    """The agent ``api_key`` belongs to and whether it is verified."""
    reply = await _auth_call("GET", auth_url(url, "whoami"), None, api_key, transport, timeout_s)
    return Identity(
        agent=str(reply.get("agent", "")),
        verified=reply.get("verified") is True,
        admin=reply.get("admin") is True,
    )


async def claim_invite(
    url: str,
    api_key: str,
    token: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Join the org whose invite ``token`` is (the ``claim_invite`` tool); its answer."""
    rpc = EnsueRpc(url, api_key, transport=transport, timeout_s=timeout_s)
    await rpc.open()
    try:
        reply = await rpc.call("claim_invite", {"token": token}, key="claim_invite")
    finally:
        await rpc.close()
    return reply.payload


async def _auth_call(
    method: str,
    url: str,
    body: dict[str, str] | None,
    api_key: str | None,
    transport: httpx.AsyncBaseTransport | None,
    timeout_s: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
        try:
            response = await client.request(method, url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientMemoryError(
                f"cannot reach {url}: {type(exc).__name__}", backend=BACKEND
            ) from None
    reply = _json(response.text)
    if response.status_code != 200:
        reason = str(reply.get("error") or response.reason_phrase)
        raise MemoryBackendError(
            f"{url} answered {response.status_code}: {reason}", backend=BACKEND
        )
    return reply


def write_api_key(path: Path, api_key: str, *, force: bool = False) -> None:
    """Store ``api_key`` in ``path`` with mode 0600; an existing file only with ``force``."""
    check_key_file(path, force=force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Without force, linking fails if the file appeared meanwhile.
        write_atomically(path, (api_key + "\n").encode(), mode=0o600, replace=force)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the API key: {exc.strerror or exc}",
            path=str(path),
            key="memory.api_key_file",
        ) from None


def check_key_file(path: Path, *, force: bool) -> None:
    """Refuse to overwrite an existing key file unless ``force``: its key would be lost."""
    if path.exists() and not force:
        raise ConfigError(
            "an API key file exists already; pass --force to replace it",
            path=str(path),
            key="memory.api_key_file",
        )


def read_api_key(path: Path) -> str:
    """The API key in ``path``, which must be a file only its owner can read or write."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"mode {stat.S_IMODE(mode):04o} is too open; run chmod 600 on it",
                path=str(path),
                key="memory.api_key_file",
            )
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the API key: {exc.strerror or exc}",
            path=str(path),
            key="memory.api_key_file",
        ) from None
    if not key:
        raise ConfigError("the API key file is empty", path=str(path), key="memory.api_key_file")
    return key
