"""The org's keys read and written through the Ensue tools: the client's primitives.

:class:`KeyValues` owns whether the memory is open and turns the tools into
create-if-absent, batched reads, compare-and-set updates (a write then a read-back on a
server that returns no versions), listing and search. A server may report a key that
exists per item or as a tool error (``isError``); both read as "exists".
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from autoresearchd.ensue import records
from autoresearchd.ensue.envelope import Reply
from autoresearchd.ensue.errors import CONFLICT, FORBIDDEN, NO_SUCH_TOOL
from autoresearchd.ensue.values import decode, encode
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.rpc import BACKEND, EnsueRpc, json_object
from autoresearchd.memory.protocol import MemoryState

log = structlog.get_logger(__name__)

GET_BATCH = 100
LIST_LIMIT = 10_000
SEARCH_LIMIT = 5


@dataclass(frozen=True, slots=True)
class Stored:
    """One key as read: its text (None if binary) and version (None if the server has none)."""

    key: str
    text: str | None
    version: int | None
    order: int = 0


class WriteOutcome(enum.Enum):
    """How a write of a contested key went."""

    WON = 1
    LOST = 2  # someone else wrote first
    REFUSED = 3  # the hub's write rules said no


class KeyValues:
    """The keys of one org over one :class:`EnsueRpc`, usable between open and close."""

    def __init__(self, rpc: EnsueRpc, keyspace: Keyspace) -> None:
        self._rpc = rpc
        self._keyspace = keyspace
        self._state = MemoryState.UNOPENED

    async def open(self) -> None:
        if self._state is not MemoryState.UNOPENED:
            raise MemoryBackendError(
                f"cannot open a memory that is {self._state.name.lower()}", backend=BACKEND
            )
        await self._rpc.open()
        self._state = MemoryState.OPENED

    async def close(self) -> None:
        self._state = MemoryState.CLOSED
        await self._rpc.close()

    def check_open(self) -> None:
        if self._state is not MemoryState.OPENED:
            raise MemoryBackendError(
                f"memory is {self._state.name.lower()}; use it inside 'async with'",
                backend=BACKEND,
            )

    async def tool(
        self, name: str, arguments: Mapping[str, Any], *, key: str, tolerate: tuple[int, ...] = ()
    ) -> Reply:
        """Call the tool ``name`` on the open memory (see :meth:`EnsueRpc.call`)."""
        self.check_open()
        return await self._rpc.call(name, arguments, key=key, tolerate=tolerate)

    async def create(
        self, key: str, text: str, description: str = "", *, embed: bool = False
    ) -> bool:
        """Create-if-absent; False when the key exists.

        ``embed`` asks the server to index ``description`` for search, as community
        clients do with theirs, so their agents find the record.
        """
        outcome = await self.create_outcome(key, text, description, embed=embed)
        if outcome is WriteOutcome.REFUSED:
            raise MemoryBackendError("the hub refused to create the key", backend=BACKEND, key=key)
        return outcome is WriteOutcome.WON

    async def create_outcome(
        self, key: str, text: str, description: str = "", *, embed: bool = False
    ) -> WriteOutcome:
        """Create-if-absent: WON, LOST (the key exists) or REFUSED (by the hub's rules).

        A server may report an existing key per item or as a tool error (``isError``);
        both read as LOST.
        """
        item: dict[str, Any] = {"key_name": key, "description": description}
        item |= {"value": encode(text), "base64": True}
        if embed:
            item |= {"embed": True, "embed_source": "description"}
        reply = await self.tool(
            "create_memory", {"items": [item]}, key=key, tolerate=(CONFLICT, FORBIDDEN)
        )
        if reply.error_code == FORBIDDEN:
            log.info("write_refused", backend=BACKEND, key=key, reason=reply.error_message)
            return WriteOutcome.REFUSED
        if reply.error_code is not None:
            return WriteOutcome.LOST
        results = reply.payload.get("results")
        entry = results[0] if isinstance(results, list) and results else {}
        status = str(entry.get("status", "created")) if isinstance(entry, dict) else ""
        if status in ("created", "ok", "success"):
            return WriteOutcome.WON
        detail = json.dumps(entry)[:200]
        if isinstance(entry, dict) and entry.get("code") == "refused":
            log.info("write_refused", backend=BACKEND, key=key, reason=entry.get("error"))
            return WriteOutcome.REFUSED
        if "exist" in detail:
            return WriteOutcome.LOST
        raise MemoryBackendError(f"create_memory failed: {detail}", backend=BACKEND, key=key)

    async def get(self, names: Sequence[str]) -> list[Stored | None]:
        """The keys ``names``, read in one call per batch, in the order asked."""
        self.check_open()
        found: dict[str, Stored] = {}
        for start in range(0, len(names), GET_BATCH):
            batch = list(names[start : start + GET_BATCH])
            reply = await self._rpc.call("get_memory", {"key_names": batch}, key=batch[0])
            for stored in _stored_entries(reply.payload).values():
                name = self._keyspace.full(stored.key)
                found[name] = Stored(name, stored.text, stored.version)
        return [found.get(key) for key in names]

    async def update(
        self, key: str, text: str, version: int | None, *, lost: tuple[int, ...] = (CONFLICT,)
    ) -> bool:
        """Write ``key``; with a version, compare-and-set: False when someone wrote first.

        ``lost`` lists the error codes that mean "someone else won" rather than a fault.
        """
        arguments: dict[str, Any] = {"key_name": key, "value": encode(text), "base64": True}
        if version is not None:
            arguments["if_match"] = version
        reply = await self._rpc.call("update_memory", arguments, key=key, tolerate=lost)
        return reply.error_code is None

    async def contested_write(self, key: str, text: str, stored: Stored | None) -> WriteOutcome:
        """Write a contested key by compare-and-set (a create when absent); the hub may refuse."""
        if stored is None:
            return await self.create_outcome(key, text)
        if stored.version is None:
            won = await self.write_verified(key, text, None)
            return WriteOutcome.WON if won else WriteOutcome.LOST
        arguments = {"key_name": key, "value": encode(text), "base64": True}
        reply = await self._rpc.call(
            "update_memory",
            {**arguments, "if_match": stored.version},
            key=key,
            tolerate=(CONFLICT, FORBIDDEN),
        )
        if reply.error_code == FORBIDDEN:
            log.info("write_refused", backend=BACKEND, key=key, reason=reply.error_message)
            return WriteOutcome.REFUSED
        return WriteOutcome.LOST if reply.error_code is not None else WriteOutcome.WON

    async def write_verified(self, key: str, text: str, version: int | None) -> bool:
        """Compare-and-set where the server has versions; else write, then read back."""
        if version is not None:
            return await self.update(key, text, version)
        await self.update(key, text, None)
        return await self.reads_back(key, text)

    async def reads_back(self, key: str, text: str) -> bool:
        (again,) = await self.get([key])
        return again is not None and again.text == text

    async def list_names(self, prefix: str) -> list[str]:
        """The full names a listing of ``prefix`` (a full name) gives, those under it only:
        a server that matched ``@o/RESULTS/`` for ``@o/results/`` would pass text no
        result's checks saw as results."""
        reply = await self.tool("list_keys", {"prefix": prefix, "limit": LIST_LIMIT}, key=prefix)
        listed = reply.payload.get("keys", reply.payload.get("results", []))
        names = [k.get("key_name") if isinstance(k, dict) else k for k in listed or []]
        full = [self._keyspace.full(name) for name in names if isinstance(name, str)]
        return [name for name in full if name.startswith(prefix)]

    async def read_all(self, prefix: str) -> list[Stored]:
        """Every key under ``prefix``, each with its place in the listing as ``order``."""
        names = await self.list_names(prefix)
        stored = await self.get(names)
        return [
            Stored(s.key, s.text, s.version, order)
            for order, s in enumerate(stored)
            if s is not None
        ]

    async def search(self, query: str, prefix: str) -> list[tuple[str, float, dict[str, Any]]]:
        """``search_memories`` hits as (key, score, record); none from a server without it."""
        reply = await self.tool(
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
            score = records.finite(hit.get("score")) or 0.0
            name = self._keyspace.full(hit["key_name"])
            if not name.startswith(prefix):  # as in list_names
                continue
            text = decode(hit.get("value"), hit.get("base64"))
            found.append((name, score, json_object(text)))
        return found


def _stored_entries(payload: Mapping[str, Any]) -> dict[str, Stored]:
    entries = payload.get("results", [])
    found = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("key_name"), str):
            continue
        if entry.get("status", "ok") not in ("ok", "found", "success") or "value" not in entry:
            continue
        version = entry.get("version")
        text = decode(entry.get("value"), entry.get("base64"))
        found[entry["key_name"]] = Stored(
            entry["key_name"], text, version if isinstance(version, int) else None
        )
    return found
