"""Who may do what on the hub: API keys, the write policy and the per-key rate limit.

API keys are random 256-bit tokens; the hub stores only their sha256, so a leaked
database does not leak keys. The write policy is pure: it looks at the stored row and
the new value and says why a write is refused. An agent may update only keys it
created, with two shared exceptions the collective relies on: the ``best/`` pairs
(any agent, but only by compare-and-set and only with a finite, strictly better
``val_bpb``), and a claim whose holder released it or let it expire (by the hub's
clock). The rate limiter is per process: a limit, not a guarantee, so it needs no
shared state.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from autoresearchd.hub.store import Agent, Memory, WritePolicy

KEY_PREFIX = "ard_"
#: ``best/`` keys every agent may move (but not ``best/agent/<name>``, which is personal).
SHARED_BEST = re.compile(
    r"^(tracks/[^/]+/)?best/(metadata|train_py|tier/[^/]+/(metadata|train_py))$"
)
CLAIM = re.compile(r"^claims/")
AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_verification_code() -> str:
    return secrets.token_hex(4)


def split_key(key_name: str) -> tuple[str, str] | None:
    """``@org/rest`` into ``(org, rest)``; None when the key has no org prefix."""
    if not key_name.startswith("@") or "/" not in key_name:
        return None
    org, rest = key_name[1:].split("/", 1)
    return (org, rest) if org and rest else None


def write_policy(
    agent: Agent, key_name: str, new_text: str | None, if_match: int | None, now: float
) -> WritePolicy:
    """The policy for one update by ``agent`` (see the module docstring)."""

    def check(current: Memory) -> str | None:
        if agent.is_admin:
            return None
        rest = (split_key(key_name) or ("", key_name))[1]
        if SHARED_BEST.match(rest):
            return _best_refusal(current, new_text, if_match, rest)
        if current.owner == agent.name:
            return None
        if CLAIM.match(rest) and _claim_is_free(current, now):
            return None
        return f"{key_name} belongs to {current.owner}"

    return check


def _best_refusal(
    current: Memory, new_text: str | None, if_match: int | None, rest: str
) -> str | None:
    if if_match is None:
        return "best/ keys change only by compare-and-set: send if_match"
    if not rest.endswith("/metadata") and rest != "best/metadata":
        return None
    new_bpb = _bpb(new_text)
    if new_bpb is None:
        return "best metadata needs a finite val_bpb"
    old_bpb = _bpb(current.text)
    if old_bpb is not None and not new_bpb < old_bpb:
        return f"val_bpb {new_bpb} does not beat the best {old_bpb}"
    return None


def _record(text: str | None) -> dict[str, object]:
    try:
        record = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _bpb(text: str | None) -> float | None:
    value = _record(text).get("val_bpb")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _claim_is_free(current: Memory, now: float) -> bool:
    record = _record(current.text)
    expires = record.get("expires_at")
    released = record.get("released") is True
    return released or (isinstance(expires, int | float) and expires <= now)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per API key: ``rate`` calls a second, bursts up to ``burst``."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def retry_after(self, key: str) -> float:
        """Take one token for ``key``: 0 when allowed, else seconds until one is free."""
        now = self._clock()
        bucket = self._buckets.setdefault(key, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate
