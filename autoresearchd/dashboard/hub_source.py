"""The dashboard's reads of a hub's database: one org's results, bests, notes and claims.

:class:`HubSource` implements :class:`~autoresearchd.dashboard.model.DashboardSource` over
a ``HubStore`` with read-only queries (``HubStore.select``),
the same SQL for SQLite and PostgreSQL. Lists read the columns schema 3 copied into the
``results`` table, through its indexes, newest first with a keyset cursor; only a result's
own page reads the stored record (its source, metrics and device). Claims are found among
the newest :data:`CLAIM_WINDOW` writes, so a long history never makes that list slower.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from autoresearchd.dashboard.model import (
    ClaimRow,
    Cursor,
    Detail,
    DeviceRow,
    Filters,
    NoteRow,
    Page,
    ResultRow,
    Standing,
    Step,
    bounded,
    walk_lineage,
)
from autoresearchd.ensue.keys import slug
from autoresearchd.ensue.records import claim_times
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.rows import decode_text
from autoresearchd.hub.storage.shared_sql import like_prefix
from autoresearchd.hub.storage.sqlite import SqliteStore
from autoresearchd.hub.storage.sqlite_statements import prefix_condition
from autoresearchd.models import sha256_text

ROW_COLUMNS = (
    "key_name, result_id, agent, track, tier, status, provisional, val_bpb, description,"
    " proposer, created_at, duration_s, seed, train_py_sha256, parent_sha256"
)
#: Claims are looked for among this many of the newest writes (a run writes about four
#: keys, so this covers the last ~1,250 runs: far more than one claim's TTL sees).
CLAIM_WINDOW = 5_000
#: Ancestors a result's page lists.
MAX_LINEAGE = 20
FILTER_COLUMNS = ("agent", "status", "tier", "proposer", "track")


class HubSource:
    """The dashboard's view of one org on a hub (see the module docstring)."""

    def __init__(self, store: HubStore, org: str) -> None:
        self.store = store
        self.org = org
        self.root = f"@{org}/"
        self._ranges = isinstance(store, SqliteStore)

    async def tracks(self) -> list[str]:
        # A loose index scan: one index probe per track, not one row per result (PostgreSQL
        # reads every row for a DISTINCT).
        rows = await self.store.select(
            "WITH RECURSIVE t (track) AS (SELECT min(track) FROM results WHERE org = ?"
            " UNION ALL SELECT (SELECT min(r.track) FROM results r WHERE r.org = ?"
            " AND r.track > t.track) FROM t WHERE t.track IS NOT NULL)"
            " SELECT track FROM t WHERE track IS NOT NULL",
            (self.org, self.org),
        )
        return [str(row[0]) for row in rows if row[0]]

    async def standings(self, limit: int) -> list[Standing]:
        counts = await self.store.select(
            "SELECT agent, runs, keeps, seconds, confirmations FROM standings WHERE org = ?",
            (self.org,),
        )
        improvements = await self._improvements()
        table = [
            Standing(
                agent=str(agent),
                improvements=improvements.get(str(agent), 0),
                keeps=int(keeps or 0),
                runs=int(runs),
                gpu_hours=float(seconds or 0.0) / 3600.0,
                confirmations=int(confirmations or 0),
            )
            for agent, runs, keeps, seconds, confirmations in counts
        ]
        table.sort(key=lambda s: (-s.improvements, -s.keeps, -s.runs, s.agent))
        return table[: bounded(limit)]

    async def _improvements(self) -> dict[str, int]:
        """Per agent: moves of a track's best (not a tier's); the seeded baseline is none."""
        bare = f"{self.root}best/metadata"
        under, params = self._under("key_name", f"{self.root}tracks/")
        rows = await self.store.select(
            f"SELECT agent, key_name, count(*) FROM audit WHERE (key_name = ? OR {under})"
            " AND action IN ('create', 'update') AND agent <> 'admin' GROUP BY agent, key_name",
            (bare, *params),
        )
        moves: dict[str, int] = {}
        for agent, key, count in rows:
            if key == bare or (str(key).endswith("/best/metadata") and "/tier/" not in key):
                moves[str(agent)] = moves.get(str(agent), 0) + int(count)
        return moves

    def _under(self, column: str, prefix: str) -> tuple[str, tuple[str, ...]]:
        """``column`` starts with ``prefix``: SQL and its parameters."""
        # SQLite's LIKE ignores case and skips the index; a range on the key reads it.
        if self._ranges:
            return prefix_condition(column, prefix)
        return f"{column} LIKE ? ESCAPE '\\'", (like_prefix(prefix),)

    async def results(self, filters: Filters, before: Cursor | None, limit: int) -> Page:
        limit = bounded(limit)
        where, params = ["org = ?"], list[Any]([self.org])
        for column in FILTER_COLUMNS:
            value = getattr(filters, column)
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND key_name < ?))")
            params += [before.at, before.at, self._key(before.key)]
        rows = await self.store.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, key_name DESC LIMIT ?",
            (*params, limit + 1),
        )
        found = tuple(self._row(row) for row in rows[:limit])
        more = len(rows) > limit and found
        return Page(found, Cursor(found[-1].at, found[-1].key) if more else None)

    def _key(self, key: str) -> str:
        return f"{self.root}results/{key}"

    def _row(self, row: Sequence[Any]) -> ResultRow:
        return ResultRow(
            key=str(row[0]).removeprefix(f"{self.root}results/"),
            result_id=str(row[1]),
            agent=str(row[2]),
            track=str(row[3]),
            tier=str(row[4]),
            status=str(row[5]),
            provisional=bool(row[6]),
            val_bpb=None if row[7] is None else float(row[7]),
            description=str(row[8]),
            proposer=str(row[9]),
            at=float(row[10]),
            duration_s=float(row[11]),
            seed=None if row[12] is None else int(row[12]),
            sha256=str(row[13]),
            parent_sha256=str(row[14]),
        )

    async def detail(self, key: str) -> Detail | None:
        rows = await self.store.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE key_name = ?", (self._key(key),)
        )
        if not rows:
            return None
        row = self._row(rows[0])
        record = await self._record(self._key(key))
        parent = await self._by_sha(row.parent_sha256) if row.parent_sha256 else None
        parent_source = await self._source_of(parent) if parent else await self._baseline(row)
        return Detail(
            row=row,
            record=record,
            train_py=_text(record.get("train_py")),
            parent_train_py=parent_source,
            lineage=tuple(await walk_lineage(row, self._by_sha, MAX_LINEAGE)),
        )

    async def _record(self, key_name: str) -> dict[str, Any]:
        (memory,) = await self.store.get([key_name])
        text = decode_text(memory.value, memory.is_base64) if memory else None
        try:
            record = json.loads(text, parse_constant=lambda _: None) if text else {}
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    async def _by_sha(self, sha: str) -> ResultRow | None:
        """The kept result of a source if there is one, else its first."""
        rows = await self.store.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE org = ? AND train_py_sha256 = ?"
            " ORDER BY CASE WHEN status = 'keep' THEN 0 ELSE 1 END, created_at, key_name"
            " LIMIT 1",
            (self.org, sha),
        )
        return self._row(rows[0]) if rows else None

    async def _source_of(self, row: ResultRow) -> str | None:
        source = (await self._record(self._key(row.key))).get("train_py")
        return source if isinstance(source, str) else None

    async def _baseline(self, row: ResultRow) -> str | None:
        """The seeded best's source, when it is the parent no result carries."""
        (memory,) = await self.store.get([f"{self.root}best/train_py"])
        text = decode_text(memory.value, memory.is_base64) if memory else None
        return text if text is not None and sha256_text(text) == row.parent_sha256 else None

    async def points(self, track: str, tier: str, limit: int) -> list[ResultRow]:
        where, params = "org = ? AND track = ?", [self.org, track]
        if tier:
            where, params = where + " AND tier = ?", [*params, tier]
        rows = await self.store.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE {where} AND val_bpb IS NOT NULL"
            " ORDER BY created_at DESC, key_name DESC LIMIT ?",
            (*params, limit),
        )
        return [self._row(row) for row in reversed(rows)]

    async def lineage(self, track: str, limit: int) -> list[Step]:
        for key in (f"{self.root}tracks/{slug(track)}/best/metadata", f"{self.root}best/metadata"):
            entries = await self.store.history(key, bounded(limit))
            steps = [_step(entry.at, entry.detail) for entry in entries]
            if any(step.val_bpb is not None for step in steps):
                return steps
        return []

    async def notes(self, kind: str, limit: int) -> list[NoteRow]:
        under, params = self._under("key_name", f"{self.root}{kind}/")
        rows = await self.store.select(
            f"SELECT owner, value, is_base64, created_at FROM memories WHERE {under}"
            " ORDER BY seq DESC LIMIT ?",
            (*params, bounded(limit)),
        )
        return [_note(kind, str(o), decode_text(v, bool(b)), float(c)) for o, v, b, c in rows]

    async def claims(self, now: float, limit: int) -> list[ClaimRow]:
        prefix = f"{self.root}claims/"
        rows = await self.store.select(
            "SELECT owner, value, is_base64 FROM memories WHERE seq >"
            " (SELECT coalesce(max(seq), 0) FROM memories) - ? AND substr(key_name, 1, ?) = ?"
            " ORDER BY seq DESC LIMIT ?",
            (CLAIM_WINDOW, len(prefix), prefix, 10 * bounded(limit)),
        )
        live = [_claim(decode_text(v, bool(b)), now) for _, v, b in rows]
        return [claim for claim in live if claim is not None][: bounded(limit)]

    async def devices(self) -> list[DeviceRow]:
        return []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=lambda _: None) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _step(at: float, detail: str) -> Step:
    metadata = _json(detail)
    return Step(
        at=at,
        agent=_text(metadata.get("agent_id")),
        val_bpb=_number(metadata.get("val_bpb")),
        description=_text(metadata.get("description")),
        sha256=_text(metadata.get("train_py_sha256")),
        result_id=_text(metadata.get("result_id")),
    )


def _note(kind: str, owner: str, text: str | None, at: float) -> NoteRow:
    record = _json(text)
    inner = record.get("value")  # our client wraps the note: {key, agent_id, value, ...}
    value: dict[str, Any] = inner if isinstance(inner, dict) else record
    body = value.get("hypothesis") or value.get("insight") or ""
    return NoteRow(
        kind=kind,
        agent=_text(value.get("agent_id")) or owner,
        title=_text(value.get("title")),
        text=_text(body),
        status=_text(value.get("status")),
        at=_number(value.get("created_at")) or at,
    )


def _claim(text: str | None, now: float) -> ClaimRow | None:
    record = _json(text)
    expires = _number(record.get("expires_at"))
    if record.get("released") is True or expires is None or expires <= now:
        return None
    return ClaimRow(
        agent=_text(record.get("agent_id")),
        track=_text(record.get("track")),
        sha256=_text(record.get("sha256")),
        claimed_at=(claim_times(record) or (0.0, 0.0))[0],
        expires_at=expires,
    )
