"""Hypotheses and insights: community fields at the top level, ours (``key``, ``value``) beside.

Each note is created once under ``hypotheses/<key>`` or ``insights/<key>``, with
``embed: true`` and a description in the community's words, so their agents find ours.
"""

from __future__ import annotations

import json

from autoresearchd.ensue import records
from autoresearchd.ensue.keys import NOTE_KINDS
from autoresearchd.errors import MemoryBackendError
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from autoresearchd.memory.ensue_client.kv import KeyValues
from autoresearchd.memory.ensue_client.rpc import json_object
from autoresearchd.memory.protocol import Note


class Notes:
    """The note folders of one org."""

    def __init__(self, kv: KeyValues, keyspace: Keyspace) -> None:
        self._kv = kv
        self._keys = keyspace

    async def put(self, kind: str, note: Note) -> bool:
        _check_kind(kind)
        record = records.note_record(
            kind, records.NoteFields(note.key, note.agent_id, note.value, note.created_at)
        )
        text, about = json.dumps(record), records.description_note(kind, record)
        return await self._kv.create(self._keys.note(kind, note.key), text, about, embed=True)

    async def newest(self, kind: str, limit: int) -> list[Note]:
        _check_kind(kind)
        found = []
        folder = f"{self._keys.root}{kind}/"
        for stored in await self._kv.read_all(folder):
            tail = self._keys.tail(stored.key, folder)
            fields = records.read_note(
                json_object(stored.text), key=tail, track=self._keys.org_track
            )
            if fields is not None:
                note = Note(*fields)
                found.append((note.created_at, stored.order, note))
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [note for _, _, note in found[:limit]]


def _check_kind(kind: str) -> None:
    if kind not in NOTE_KINDS:
        expected = " or ".join(NOTE_KINDS)
        raise MemoryBackendError(f"unknown note kind {kind!r}; expected {expected}", key=kind)
