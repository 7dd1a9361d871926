"""The network collective memory: the Ensue JSON-RPC protocol, to the public network or our hub.

:class:`EnsueRpc` is the wire: one pooled ``httpx.AsyncClient``, a timeout on every call,
``tools/call`` bodies, base64 values, replies with or without an SSE ``data:`` prefix.
Transport errors, 5xx and 429 are retried a few times with jittered, capped exponential
backoff (``min·2^n`` capped, times U(0.5, 1), at least ``Retry-After``) and then become
:class:`TransientMemoryError`, so the publisher's outbox does the long-term retrying.
Everything else becomes :class:`MemoryBackendError` naming the tool and key.

:class:`EnsueMemory` maps the ``CollectiveMemory`` Protocol onto the community key
layout under ``@<org>/``:

- ``results/<agent>--<slug>--<id6>``: the result record (``Result.to_record``, which
  carries ``track``); ``id6`` hashes the result id, so a replay hits the same key.
- ``claims/<track>--<sha12>``: ``{agent_id, track, sha256, claimed_at, expires_at,
  released}``, created atomically; a released or expired claim is taken over by
  ``update_memory`` with ``if_match``.
- ``runs/<track>--<sha256>``: a marker written with each result, so ``was_run`` is one read;
  ``published/<id>--<id6>`` maps a result id to its key, so a replay is found by id.
- ``best/metadata`` + ``best/train_py``, ``best/tier/<tier>/…``: the best of the
  *primary track* (the configured ``experiment.track``), so community clients see it
  where they expect it; the bests of any other track live under ``tracks/<track>/best/…``.
  The metadata carries ``train_py_sha256`` and ``result_key``: a torn pair is re-read and,
  if it stays torn, the source comes from the result record. ``best/agent/<agent>`` holds
  each agent's own best (metadata only).
- ``hypotheses/<key>`` and ``insights/<key>``: ``{key, agent_id, created_at, value}``.

A best moves by compare-and-set: read the pair in one call, compare, write the metadata
with ``if_match``, then the source with ``if_match`` for as long as the metadata still
names us. On a server that returns no versions (no ``if_match``), the client reads,
compares, writes and then reads back to verify. ``results`` and ``notes`` list their
whole namespace, which suits swarms of up to some thousands of records.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
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
from autoresearchd.errors import ConfigError, MemoryBackendError, TransientMemoryError
from autoresearchd.fsutil import write_atomically
from autoresearchd.memory.protocol import BestChange, Note, PublishOutcome
from autoresearchd.models import Best, Result, Status, sha256_text

log = structlog.get_logger(__name__)

BACKEND = "ensue"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_MIN_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 2.0
NOTE_KINDS = ("hypotheses", "insights")
#: JSON-RPC error codes our hub uses (see ``autoresearchd.hub.rpc``).
CONFLICT = -32009
FORBIDDEN = -32003
#: What a server without our ``best_history`` tool answers (unknown tool or method).
NO_SUCH_TOOL = (-32601, -32602)
GET_BATCH = 100
LIST_LIMIT = 10_000
HISTORY_LIMIT = 1000
#: How often a compare-and-set loop may lose before the call gives up (each loss means
#: someone else made progress, so this bounds only pathological contention).
CAS_ATTEMPTS = 100
CLAIM_ATTEMPTS = 5
TORN_READS = 4


# --- the wire ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A tool's answer: ``payload`` on success, else the JSON-RPC error code and data."""

    payload: dict[str, Any]
    error_code: int | None = None
    error_message: str = ""


def parse_reply(text: str) -> dict[str, Any]:
    """The JSON-RPC message in ``text``, with or without an SSE ``data:`` prefix."""
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    for candidate in [*reversed(data), text] if data else [text]:
        try:
            message = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(message, dict):
            return message
    raise ValueError("no JSON-RPC object in the reply")


def _payload(message: Mapping[str, Any]) -> Reply:
    error = message.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        return Reply({}, code if isinstance(code, int) else 0, str(error.get("message", "")))
    result = message.get("result")
    if not isinstance(result, dict):
        raise ValueError("the reply has neither result nor error")
    content = result.get("content")
    text = content[0].get("text") if isinstance(content, list) and content else None
    if not isinstance(text, str):
        raise ValueError("the reply has no result.content[0].text")
    if result.get("isError"):
        return Reply({}, 0, text)
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {"text": text}
    return Reply(payload if isinstance(payload, dict) else {"value": payload})


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


def slug(text: str, max_len: int = 48) -> str:
    """A readable key segment: lowercase letters, digits and single dashes."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:max_len].strip("-") or "x"


def _short_hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _encode(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _decode(value: Any, is_base64: Any) -> str | None:
    if not isinstance(value, str):
        return None if value is None else json.dumps(value)
    if not is_base64:
        return value
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


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
    ``clock`` gives the time for claim expiry and best timestamps.
    """

    def __init__(
        self,
        url: str,
        org: str,
        api_key: str,
        *,
        primary_track: str,
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
        self._clock = clock
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
        base = self.root if track == self.primary_track else f"{self.root}tracks/{slug(track)}/"
        return f"{base}best/" if tier is None else f"{base}best/tier/{slug(tier)}/"

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

    async def _create(self, key: str, text: str, description: str = "") -> bool:
        """Create-if-absent; False when the key exists."""
        outcome = await self._create_outcome(key, text, description)
        if outcome is Write.REFUSED:
            raise MemoryBackendError("the hub refused to create the key", backend=BACKEND, key=key)
        return outcome is Write.WON

    async def _create_outcome(self, key: str, text: str, description: str = "") -> Write:
        """Create-if-absent: WON, LOST (the key exists) or REFUSED (by the hub's rules)."""
        self._check_open()
        item = {"key_name": key, "description": description, "value": _encode(text)}
        reply = await self._rpc.call(
            "create_memory", {"items": [{**item, "base64": True}]}, key=key, tolerate=(CONFLICT,)
        )
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

    async def _get(self, keys: Sequence[str]) -> list[Stored | None]:
        """The keys, read in one call per batch, in the order asked."""
        self._check_open()
        found: dict[str, Stored] = {}
        for start in range(0, len(keys), GET_BATCH):
            batch = list(keys[start : start + GET_BATCH])
            reply = await self._rpc.call("get_memory", {"key_names": batch}, key=batch[0])
            found.update(_stored_entries(reply.payload))
        return [found.get(key) for key in keys]

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
        keys = reply.payload.get("keys", reply.payload.get("results", []))
        names = [k.get("key_name") if isinstance(k, dict) else k for k in keys or []]
        return [name for name in names if isinstance(name, str)]

    async def _read_all(self, prefix: str) -> list[Stored]:
        keys = await self._list(prefix)
        stored = await self._get(keys)
        return [
            Stored(s.key, s.text, s.version, order)
            for order, s in enumerate(stored)
            if s is not None
        ]

    # --- claims ----------------------------------------------------------------------------

    async def claim(self, track: str, sha256: str, agent_id: str, ttl_s: float) -> bool:
        key, now = self._claim_key(track, sha256), self._clock()
        record = {
            "agent_id": agent_id,
            "track": track,
            "sha256": sha256,
            "claimed_at": now,
            "expires_at": now + ttl_s,
            "released": False,
        }
        text = json.dumps(record)
        for _ in range(CLAIM_ATTEMPTS):
            if await self._create(key, text, f"claim {track} {sha256[:12]}"):
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
        released = {**holder, "released": True, "expires_at": now}
        await self._write_verified(key, json.dumps(released), stored.version)

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
        return _result_from(stored.text if stored else None)

    async def _create_result(self, result: Result) -> tuple[bool, Result, str]:
        text = json.dumps(result.to_record())
        for key in self._result_keys(result):
            if await self._create(key, text, result.description):
                return True, result, key
            prior = await self._result_at(key)
            if prior is not None and prior.id == result.id:
                return False, prior, key
        raise MemoryBackendError(
            f"result {result.id} collides with another result's key", backend=BACKEND, key=key
        )

    async def _move_bests(self, result: Result, result_key: str) -> tuple[str, ...]:
        bpb = result.best_bpb
        if result.status is not Status.KEEP or bpb is None or not math.isfinite(bpb):
            return ()
        moved = []
        scopes = [
            (None, "track"),
            *([(result.vram_tier, result.vram_tier)] * bool(result.vram_tier)),
        ]
        for tier, label in scopes:
            base = self._best_base(result.track, tier)
            record = self._best_record(result, result_key, tier, bpb)
            if await self._move_best(base + "metadata", base + "train_py", record, result):
                moved.append(label)
        agent_key = f"{self._best_base(result.track, None)}agent/{slug(result.agent_id)}"
        await self._move_best(
            agent_key, None, self._best_record(result, result_key, None, bpb), result
        )
        return tuple(moved)

    def _best_record(
        self, result: Result, result_key: str, tier: str | None, bpb: float
    ) -> dict[str, Any]:
        return {
            "track": result.track,
            "tier": tier,
            "val_bpb": bpb,
            "train_py_sha256": result.train_py_sha256,
            "result_id": result.id,
            "result_key": result_key,
            "agent_id": result.agent_id,
            "description": result.description,
            "memory_gb": result.memory_gb,
            "vram_tier": result.vram_tier,
            "updated_at": self._clock(),
        }

    async def _move_best(
        self, meta_key: str, train_key: str | None, record: dict[str, Any], result: Result
    ) -> bool:
        """Compare-and-set the best metadata, then its source; True if we moved it."""
        keys = [meta_key] if train_key is None else [meta_key, train_key]
        for _ in range(CAS_ATTEMPTS):
            meta, *train = await self._get(keys)
            current = _json(meta.text) if meta else {}
            old = _finite(current.get("val_bpb"))
            if current.get("result_id") == result.id or (
                old is not None and not record["val_bpb"] < old
            ):
                return False
            full = {
                **record,
                "previous_best_val_bpb": current.get("val_bpb"),
                "previous_best_by": current.get("agent_id"),
                "previous_best_description": current.get("description"),
            }
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
            if train is not None and train.text is not None:
                if sha256_text(train.text) == record.get("train_py_sha256"):
                    return _best(track, tier, record, train.text)
            log.debug("best_torn", backend=BACKEND, key=meta_key, attempt=attempt)
            await anyio.sleep(0.02 * 2**attempt)
        return await self._best_from_result(track, tier, record, meta_key)

    async def _best_from_result(
        self, track: str, tier: str | None, record: dict[str, Any], meta_key: str
    ) -> Best:
        """A torn pair that stays torn: take the source from the result the metadata names."""
        result_key = record.get("result_key")
        if isinstance(result_key, str) and result_key:
            (stored,) = await self._get([result_key])
            result = _result_from(stored.text if stored else None)
            if result is not None and result.train_py_sha256 == record.get("train_py_sha256"):
                return _best(track, tier, record, result.train_py)
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
            result = _result_from(stored.text)
            if result is not None and (track is None or result.track == track):
                found.append((result.completed_at, stored.order, result))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [result for _, _, result in found[:limit]]

    # --- notes -----------------------------------------------------------------------------

    async def put_note(self, kind: str, note: Note) -> bool:
        _check_kind(kind)
        record = {
            "key": note.key,
            "agent_id": note.agent_id,
            "created_at": note.created_at,
            "value": note.value,
        }
        return await self._create(self._note_key(kind, note.key), json.dumps(record))

    async def notes(self, kind: str, limit: int = 100) -> list[Note]:
        _check_kind(kind)
        found = []
        for stored in await self._read_all(f"{self.root}{kind}/"):
            note = _note_from(_json(stored.text))
            if note is not None:
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


def _result_from(text: str | None) -> Result | None:
    record = _json(text)
    try:
        return Result.from_record(record) if record else None
    except (TypeError, ValueError, KeyError):
        return None  # a record from another client that lacks our fields


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


def _note_from(record: Mapping[str, Any]) -> Note | None:
    value, created = record.get("value"), _finite(record.get("created_at"))
    if not isinstance(value, dict) or created is None or not isinstance(record.get("key"), str):
        return None
    return Note(record["key"], str(record.get("agent_id", "")), value, created)


def _best(track: str, tier: str | None, record: Mapping[str, Any], source: str) -> Best:
    bpb = _finite(record.get("val_bpb"))
    return Best(
        track=track,
        tier=tier,
        val_bpb=math.inf if bpb is None else bpb,  # a seeded baseline has no score yet
        train_py=source,
        train_py_sha256=sha256_text(source),
        result_id=str(record.get("result_id") or ""),
        agent_id=str(record.get("agent_id") or ""),
        updated_at=_finite(record.get("updated_at")) or 0.0,
    )


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
