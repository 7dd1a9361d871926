"""The dashboard's reads of the solo daemon's SQLite memory, and its devices' live state.

:class:`MemorySource` implements :class:`~autoresearchd.dashboard.model.DashboardSource`
over a :class:`~autoresearchd.memory.sqlite.SqliteMemory` with read-only queries. The
memory keeps each result whole as JSON beside the columns its own queries need, so the
fields only the dashboard lists (tier, proposer, description, ...) are read with
``json_extract``: a solo machine's history is thousands of runs, not a swarm's millions.
Devices come from the running daemon's control socket; a daemon that is not running
shows none.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoresearchd.control import request
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
from autoresearchd.errors import ControlError
from autoresearchd.memory.sqlite import TRACK_SCOPE, SqliteMemory
from autoresearchd.models import sha256_text

ROW_COLUMNS = (
    "id, track, agent_id, status, val_bpb, completed_at, train_py_sha256,"
    " coalesce(json_extract(record, '$.vram_tier'), ''),"
    " coalesce(json_extract(record, '$.proposer'), ''),"
    " coalesce(json_extract(record, '$.description'), ''),"
    " coalesce(json_extract(record, '$.duration_s'), 0),"
    " coalesce(json_extract(record, '$.parent_sha256'), ''),"
    " coalesce(json_extract(record, '$.provisional'), 0),"
    " json_extract(record, '$.seed')"
)
FILTERS = {
    "agent": "agent_id = ?",
    "status": "status = ?",
    "track": "track = ?",
    "tier": "json_extract(record, '$.vram_tier') = ?",
    "proposer": "json_extract(record, '$.proposer') = ?",
}
MAX_LINEAGE = 20
Devices = Callable[[], Awaitable[list[DeviceRow]]]


class MemorySource:
    """The dashboard's view of a solo daemon (see the module docstring).

    ``baseline`` is the workspace's train.py, the parent of the first runs, which no
    result carries; ``devices`` reads the live state of the local devices.
    """

    def __init__(
        self, memory: SqliteMemory, *, baseline: str | None = None, devices: Devices | None = None
    ) -> None:
        self.memory = memory
        self.baseline = baseline
        self._devices = devices

    async def tracks(self) -> list[str]:
        rows = await self.memory.select("SELECT DISTINCT track FROM results ORDER BY track", ())
        return [str(row[0]) for row in rows if row[0]]

    async def standings(self, limit: int) -> list[Standing]:
        rows = await self.memory.select(
            "SELECT agent_id, count(*), sum(status = 'keep'),"
            " sum(coalesce(json_extract(record, '$.duration_s'), 0)),"
            " sum(val_bpb IS NOT NULL AND EXISTS (SELECT 1 FROM results f"
            " WHERE f.train_py_sha256 = r.train_py_sha256 AND f.agent_id <> r.agent_id"
            " AND f.seq < r.seq)) FROM results r GROUP BY agent_id",
            (),
        )
        moves = await self.memory.select(
            "SELECT agent_id, count(*) FROM best_history WHERE scope = ? GROUP BY agent_id",
            (TRACK_SCOPE,),
        )
        improvements = {str(agent): int(str(n)) for agent, n in moves}
        table = [
            Standing(
                agent=str(agent),
                improvements=improvements.get(str(agent), 0),
                keeps=_int(keeps),
                runs=_int(runs),
                gpu_hours=_float(seconds) / 3600.0,
                confirmations=_int(confirmations),
            )
            for agent, runs, keeps, seconds, confirmations in rows
        ]
        table.sort(key=lambda s: (-s.improvements, -s.keeps, -s.runs, s.agent))
        return table[: bounded(limit)]

    async def results(self, filters: Filters, before: Cursor | None, limit: int) -> Page:
        limit = bounded(limit)
        where, params = ["1 = 1"], list[object]()
        for name, clause in FILTERS.items():
            value = getattr(filters, name)
            if value:
                where.append(clause)
                params.append(value)
        if before is not None:
            where.append("(completed_at < ? OR (completed_at = ? AND id < ?))")
            params += [before.at, before.at, before.key]
        rows = await self.memory.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE {' AND '.join(where)}"
            " ORDER BY completed_at DESC, id DESC LIMIT ?",
            (*params, limit + 1),
        )
        found = tuple(_row(row) for row in rows[:limit])
        more = len(rows) > limit and found
        return Page(found, Cursor(found[-1].at, found[-1].key) if more else None)

    async def detail(self, key: str) -> Detail | None:
        rows = await self.memory.select(
            f"SELECT {ROW_COLUMNS}, record FROM results WHERE id = ?", (key,)
        )
        if not rows:
            return None
        row, record = _row(rows[0]), _json(rows[0][-1])
        parent = await self._source(row.parent_sha256)
        return Detail(
            row=row,
            record=record,
            train_py=str(record.get("train_py", "")),
            parent_train_py=parent,
            lineage=tuple(await walk_lineage(row, self._by_sha, MAX_LINEAGE)),
        )

    async def _by_sha(self, sha: str) -> ResultRow | None:
        rows = await self.memory.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE train_py_sha256 = ?"
            " ORDER BY status <> 'keep', seq LIMIT 1",
            (sha,),
        )
        return _row(rows[0]) if rows else None

    async def _source(self, sha: str) -> str | None:
        if not sha:
            return None
        rows = await self.memory.select(
            "SELECT json_extract(record, '$.train_py') FROM results WHERE train_py_sha256 = ?"
            " LIMIT 1",
            (sha,),
        )
        if rows and isinstance(rows[0][0], str):
            return rows[0][0]
        if self.baseline is not None and sha256_text(self.baseline) == sha:
            return self.baseline
        return None

    async def points(self, track: str, tier: str, limit: int) -> list[ResultRow]:
        where, params = "track = ? AND val_bpb IS NOT NULL", [track]
        if tier:
            where, params = where + " AND json_extract(record, '$.vram_tier') = ?", [track, tier]
        rows = await self.memory.select(
            f"SELECT {ROW_COLUMNS} FROM results WHERE {where}"
            " ORDER BY completed_at DESC, seq DESC LIMIT ?",
            (*params, limit),
        )
        return [_row(row) for row in reversed(rows)]

    async def lineage(self, track: str, limit: int) -> list[Step]:
        rows = await self.memory.select(
            "SELECT at, agent_id, val_bpb, description, train_py_sha256, result_id"
            " FROM best_history WHERE track = ? AND scope = ? ORDER BY seq DESC LIMIT ?",
            (track, TRACK_SCOPE, bounded(limit)),
        )
        return [
            Step(_float(at), str(agent), _float(bpb), str(text), str(sha), str(rid))
            for at, agent, bpb, text, sha, rid in rows
        ]

    async def notes(self, kind: str, limit: int) -> list[NoteRow]:
        found = await self.memory.notes(kind, bounded(limit))
        return [_note(kind, note.agent_id, note.value, note.created_at) for note in found]

    async def claims(self, now: float, limit: int) -> list[ClaimRow]:
        rows = await self.memory.select(
            "SELECT agent_id, track, sha256, expires_at FROM claims WHERE expires_at > ?"
            " ORDER BY expires_at DESC LIMIT ?",
            (now, bounded(limit)),
        )
        return [
            ClaimRow(str(agent), str(track), str(sha), 0.0, _float(expires))
            for agent, track, sha, expires in rows
        ]

    async def devices(self) -> list[DeviceRow]:
        return await self._devices() if self._devices is not None else []


def control_devices(socket: Path) -> Devices:
    """A reader of the devices' live state from the daemon's control socket at ``socket``."""

    async def devices() -> list[DeviceRow]:
        try:
            reply = await request(socket, "status")
        except ControlError:
            return []  # no daemon running: its devices have no live state to show
        status = reply.get("status", {})
        return [_device(d) for d in status.get("devices", []) if isinstance(d, Mapping)]

    return devices


def _device(device: Mapping[str, Any]) -> DeviceRow:
    run = device.get("experiment") if isinstance(device.get("experiment"), Mapping) else None
    return DeviceRow(
        device=str(device.get("uuid", device.get("index", ""))),
        name=str(device.get("name", "")),
        state=str(device.get("state", "")).replace("_", " "),
        experiment=str(run.get("description", "")) if run else "",
        time_left_s=_float(run.get("remaining_s")) if run else None,
    )


def _row(row: Sequence[Any]) -> ResultRow:
    return ResultRow(
        key=str(row[0]),
        result_id=str(row[0]),
        agent=str(row[2]),
        track=str(row[1]),
        tier=str(row[7]),
        status=str(row[3]),
        provisional=bool(row[12]),
        val_bpb=None if row[4] is None else float(row[4]),
        description=str(row[9]),
        proposer=str(row[8]),
        at=float(row[5]),
        duration_s=_float(row[10]),
        seed=row[13] if isinstance(row[13], int) else None,
        sha256=str(row[6]),
        parent_sha256=str(row[11] or ""),
    )


def _note(kind: str, agent: str, value: Mapping[str, Any], at: float) -> NoteRow:
    body = value.get("hypothesis") or value.get("insight") or ""
    return NoteRow(
        kind=kind,
        agent=str(value.get("agent_id") or agent),
        title=str(value.get("title", "")),
        text=str(body),
        status=str(value.get("status", "")),
        at=at,
    )


def _json(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
