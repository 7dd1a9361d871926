"""An org's own settings on the hub: its public namespaces and its invites.

Both live as ordinary memories under the org's reserved ``.hub/`` folder, written by the
admin agent, so they are in the database like everything else (several replicas agree)
and need no schema of their own; the tools hide ``.hub/`` from listings and refuse
writes to it.

- ``.hub/public``: ``{"prefixes": [...]}``, the namespaces (of ``results/``, ``best/``,
  ``leaderboard``) anyone may read without a key.
- ``.hub/invites/<sha256(token)>``: ``{uses_left, expires_at, created_by, created_at}``.
  Only the token's hash is stored. Claiming one takes a use by compare-and-set, so two
  agents racing for the last use cannot both win, then verifies the claimer.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from autoresearchd.ensue.keys import SHAREABLE, rest_of
from autoresearchd.errors import HubError
from autoresearchd.hub.credentials import hash_key
from autoresearchd.hub.policy import record_of
from autoresearchd.hub.storage.protocol import HubStore, WritePolicy
from autoresearchd.hub.storage.rows import Agent, Memory, NewMemory

RESERVED = ".hub/"
PUBLIC = RESERVED + "public"
INVITES = RESERVED + "invites/"
TOKEN_PREFIX = "inv_"
DEFAULT_INVITE_TTL_S = 7 * 24 * 3600.0
MAX_INVITE_USES = 10_000
CLAIM_ATTEMPTS = 20
#: The writer of an org's settings: the store's checks are the tools', not a policy's.
HUB = Agent("admin", is_admin=True, verified=True)
_ANYONE = WritePolicy(lambda current, evidence: None)


@dataclass(frozen=True, slots=True)
class Invite:
    token: str
    org: str
    uses: int
    expires_at: float


def is_reserved(rest: str) -> bool:
    return rest.startswith(RESERVED)


def is_reserved_key(key_name: str) -> bool:
    """Whether a full key name lies in an org's ``.hub/``; a substring test settles it for
    almost every key (listings and searches ask this of each key they return)."""
    return RESERVED in key_name and is_reserved(rest_of(key_name))


async def public_prefixes(store: HubStore, org: str) -> tuple[str, ...]:
    """The namespaces of ``org`` readable without a key."""
    (stored,) = await store.get([f"@{org}/{PUBLIC}"])
    return _prefixes(stored)


def _prefixes(stored: Memory | None) -> tuple[str, ...]:
    prefixes = record_of(stored.text if stored else None).get("prefixes")
    if not isinstance(prefixes, list):
        return ()
    return tuple(p for p in prefixes if isinstance(p, str) and p in SHAREABLE)


async def set_public(store: HubStore, org: str, prefix: str, public: bool, now: float) -> list[str]:
    """Make ``prefix`` of ``org`` public (or private again); the public namespaces after."""
    key = f"@{org}/{PUBLIC}"
    for _ in range(CLAIM_ATTEMPTS):
        (stored,) = await store.get([key])
        current = set(_prefixes(stored))
        wanted = sorted(current | {prefix} if public else current - {prefix})
        item = NewMemory(key, json.dumps({"prefixes": wanted}), False, "public namespaces")
        if stored is None:
            outcome = await store.create(HUB, item, now)
        else:
            outcome = await store.update(HUB, item, stored.version, _ANYONE, now)
        if outcome.version is not None:
            return wanted
    raise HubError(f"the public namespaces of @{org} kept changing")


async def create_invite(
    store: HubStore, org: str, by: str, uses: int, ttl_s: float, now: float
) -> Invite:
    token = f"{TOKEN_PREFIX}{org}.{secrets.token_urlsafe(24)}"
    record = {"uses_left": uses, "expires_at": now + ttl_s, "created_by": by, "created_at": now}
    item = NewMemory(f"@{org}/{INVITES}{hash_key(token)}", json.dumps(record), False, "invite")
    await store.create(HUB, item, now)
    return Invite(token, org, uses, now + ttl_s)


def org_of(token: str) -> str | None:
    """The org an invite token names (``inv_<org>.<random>``); None if it is not one."""
    if not token.startswith(TOKEN_PREFIX) or "." not in token:
        return None
    org = token[len(TOKEN_PREFIX) :].rsplit(".", 1)[0]
    return org or None


async def claim_invite(store: HubStore, org: str, token: str, agent: str, now: float) -> str:
    """Take one use of the invite ``token`` of ``org`` and verify ``agent``; "" on success,
    else why not."""
    key = f"@{org}/{INVITES}{hash_key(token)}"
    for _ in range(CLAIM_ATTEMPTS):
        (stored,) = await store.get([key])
        if stored is None:
            return "unknown invite token"
        record = record_of(stored.text)
        uses, expires = record.get("uses_left"), record.get("expires_at")
        if not isinstance(expires, int | float) or expires <= now:
            return "the invite has expired"
        if not isinstance(uses, int) or uses < 1:
            return "the invite has been used up"
        left = {**record, "uses_left": uses - 1}
        item = NewMemory(key, json.dumps(left), False, "invite")
        outcome = await store.update(HUB, item, stored.version, _ANYONE, now)
        if outcome.version is not None:
            await store.mark_verified(agent, now)
            return ""
    return "the invite is contended; claim it again"
