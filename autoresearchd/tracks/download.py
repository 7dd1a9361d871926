"""Fetch a corpus by URL: resumable, retried at the transport edge, checked by sha256.

Bytes are appended to ``<dest>.part`` as they arrive; a retry asks for the rest with an
HTTP ``Range`` header, so an interrupted transfer resumes instead of starting over.
Only transport errors, 5xx and 429 are retried (jittered, capped exponential backoff);
the final failure, any other HTTP status and a checksum mismatch become a one-line
:class:`DataError`. The file appears at ``dest`` only once its checksum matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import httpx
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from autoresearchd.backoff import jittered_wait
from autoresearchd.errors import DataError

log = structlog.get_logger(__name__)

DEFAULT_ATTEMPTS = 5
DEFAULT_WAIT_S = 1.0
DEFAULT_MAX_WAIT_S = 30.0
DEFAULT_TIMEOUT_S = 30.0


class _TransientError(Exception):
    """A failure worth retrying: the transport broke, or the server is overloaded."""


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    attempts: int = DEFAULT_ATTEMPTS,
    wait_s: float = DEFAULT_WAIT_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` and verify it; return ``dest``."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    retrying = Retrying(
        retry=retry_if_exception_type(_TransientError),
        stop=stop_after_attempt(attempts),
        wait=jittered_wait(wait_s, DEFAULT_MAX_WAIT_S * wait_s),
        before_sleep=_log_retry(url),
        reraise=True,
    )
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
            for attempt in retrying:
                with attempt:
                    _fetch(client, url, part)
    except _TransientError as exc:
        raise DataError(f"cannot download {url} after {attempts} attempts: {exc}") from None
    _verify(part, sha256, url)
    part.replace(dest)
    log.info("download_finished", url=url, path=str(dest), bytes=dest.stat().st_size)
    return dest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(client: httpx.Client, url: str, part: Path) -> None:
    """One attempt: ask for the bytes ``part`` lacks and append them."""
    offset = part.stat().st_size if part.exists() else 0
    # Ranges count encoded bytes, so ask for none: what arrives is what the checksum covers.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                return  # nothing left to send: the checksum decides whether it is whole
            _check_status(response, url)
            resumed = response.status_code == 206
            with part.open("ab" if resumed else "wb") as handle:
                # No chunk size: each piece is written as it arrives, so a cut keeps it.
                for chunk in response.iter_raw():
                    handle.write(chunk)
    except httpx.TransportError as exc:
        raise _TransientError(_describe(exc)) from exc


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status >= 500 or status == 429:
        raise _TransientError(f"HTTP {status}")
    if status not in (200, 206):
        raise DataError(f"cannot download {url}: HTTP {status}")


def _verify(part: Path, expected: str, url: str) -> None:
    actual = sha256_file(part)
    if actual != expected:
        part.unlink()
        raise DataError(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}")


def _describe(exc: httpx.TransportError) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_retry(url: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "download_retry",
            url=url,
            attempt=state.attempt_number,
            error=str(error),
            wait_s=round(state.upcoming_sleep, 3),
        )

    return before_sleep
