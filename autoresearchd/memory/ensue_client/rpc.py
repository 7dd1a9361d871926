"""The wire to an Ensue endpoint: one pooled connection, timeouts, short retries, error mapping.

:class:`EnsueRpc` posts JSON-RPC ``tools/call`` bodies over one ``httpx.AsyncClient`` and
reads replies with or without an SSE ``data:`` prefix. Transport errors, 5xx and 429 are
retried a few times with jittered, capped exponential backoff (``min·2^n`` capped, times
U(0.5, 1), at least ``Retry-After``) and then become :class:`TransientMemoryError`, so the
publisher's outbox does the long-term retrying. Everything else becomes
:class:`MemoryBackendError` naming the tool and key.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import httpx
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from autoresearchd.backoff import jittered_wait
from autoresearchd.ensue.envelope import Reply, tool_request
from autoresearchd.ensue.envelope import parse_message as parse_reply
from autoresearchd.ensue.envelope import read_reply as _payload
from autoresearchd.errors import MemoryBackendError, TransientMemoryError

log = structlog.get_logger(__name__)

BACKEND = "ensue"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_MIN_BACKOFF_S = 0.2
DEFAULT_MAX_BACKOFF_S = 2.0


def json_object(text: str | None) -> dict[str, Any]:
    """The JSON object ``text`` holds; empty for no text, malformed JSON or another type."""
    try:
        record = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


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
        body = tool_request(tool, arguments, next(self._ids))
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
