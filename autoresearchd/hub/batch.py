"""``publish_result``: a result, its markers and the bests it moves, in one call and one
transaction.

A publish over the plain tools takes a request per key it reads or writes (seven to
twelve). This extension tool, which the public Ensue network does not have (a client
falls back to the plain tools when a hub answers "unknown tool"), does it all in one:

- ``result``: ``{"key_names": [...], "value", "base64", "description"}``. The record is
  created at the first of ``key_names`` that is free; a key that already holds a record of
  the same ``id`` is a replay (``created: false``), as is one a marker already names; a
  key holding another record is skipped. A replay whose record differs from the stored
  one moves no best.
- ``markers``: ``[{"key_name", "value", "base64"}]``, JSON objects, each created if absent
  with ``result_key`` set to where the result landed.
- ``bests``: ``[{"metadata_key", "train_py_key"?, "value", "base64", "train_py"?}]``: each
  metadata record (with ``result_key`` set, and ``previous_best_val_bpb``,
  ``previous_best_by`` and ``previous_best_description`` from the metadata it replaces)
  is written when its ``val_bpb`` beats the stored one and the stored one is not this
  result's, then its source. A stored best is moved only when it is of the result's track
  (:func:`~autoresearchd.ensue.records.best_track_confirmed`): one that names no track is
  the org's own, moved only when the item says ``"org_track": true`` (the client's operator
  declared the org's track to be this one). Statuses: ``moved``, ``unchanged``, ``foreign``
  (another track's best, left alone) or ``refused``.

Every write goes through the same policies (:func:`~autoresearchd.hub.policy.create_policy`,
:func:`~autoresearchd.hub.policy.write_policy`, :func:`~autoresearchd.hub.policy.index_result`)
as the plain tools, run by the store on the rows its transaction sees: a refusal there is
a refusal here. The steps are a :data:`~autoresearchd.hub.storage.protocol.Plan`, so SQLite and
PostgreSQL run the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autoresearchd.ensue import values
from autoresearchd.ensue.keys import split_key
from autoresearchd.ensue.records import best_track_confirmed
from autoresearchd.hub.arguments import arg, invalid
from autoresearchd.hub.policy import (
    RESULT,
    Rules,
    create_policy,
    finite,
    index_result,
    parse_record,
    record_of,
    write_policy,
)
from autoresearchd.hub.storage.protocol import (
    REASON_EXISTS,
    REASON_REFUSED,
    CreateKey,
    KeyWrite,
    Plan,
    ReadKeys,
    UpdateKey,
    WriteOutcome,
)
from autoresearchd.hub.storage.rows import Agent, Memory, NewMemory, decode_text
from autoresearchd.hub.strictjson import JsonRefused
from autoresearchd.hub.tools import Tools, audit_detail

TOOL = "publish_result"
MAX_CANDIDATES = 4
MAX_MARKERS = 8
MAX_BESTS = 8
#: How often a best is read again after another writer created or moved it first.
MOVE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Best:
    metadata_key: str
    record: dict[str, Any]
    train_py_key: str | None
    train_py: NewMemory | None
    org_track: bool = False


async def publish_result(tools: Tools, agent: Agent, args: dict[str, Any]) -> dict[str, Any]:
    """The ``publish_result`` tool (see the module docstring)."""
    result = arg(args, "result", dict)
    candidates = arg(result, "key_names", list)
    if not 0 < len(candidates) <= MAX_CANDIDATES:
        raise invalid(f"result.key_names must hold 1 to {MAX_CANDIDATES} keys")
    keys = [await tools.org_key(key) for key in candidates]
    if not all(RESULT.match((split_key(key) or ("", ""))[1]) for key in keys):
        raise invalid("result.key_names must be results/ keys")
    value, is_base64 = tools.checked_value(result)
    text = decode_text(value, is_base64)
    record = record_of(text)
    if not isinstance(record.get("id"), str):
        raise invalid("result.value must be a JSON object with an id")
    description = arg(result, "description", str, "")
    markers = []
    for marker in _items(args, "markers", MAX_MARKERS):
        key = await tools.org_key(marker.get("key_name"))
        markers.append((key, _object(tools, marker, "markers")))
    bests = []
    for best in _items(args, "bests", MAX_BESTS):
        meta_key = await tools.org_key(best.get("metadata_key"))
        train_key = best.get("train_py_key")
        source = None
        if train_key is not None:
            train_key = await tools.org_key(train_key)
            source_value, source_b64 = tools.checked_value({**best, "value": best.get("train_py")})
            source = NewMemory(train_key, source_value, source_b64)
        org_track = best.get("org_track", False)
        if not isinstance(org_track, bool):
            raise invalid("bests[].org_track must be true or false")
        metadata = _object(tools, best, "bests")
        bests.append(Best(meta_key, metadata, train_key, source, org_track))
    new = [NewMemory(key, value, is_base64, description) for key in keys]
    plan = _publish(agent, new, str(record["id"]), markers, bests, tools.clock(), tools.rules)
    return await tools.store.transact(plan)


def _items(args: dict[str, Any], name: str, most: int) -> list[dict[str, Any]]:
    items = arg(args, name, list, [])
    if len(items) > most or not all(isinstance(item, dict) for item in items):
        raise invalid(f"{name} must hold at most {most} objects")
    return list(items)


def _object(tools: Tools, item: dict[str, Any], name: str) -> dict[str, Any]:
    """The JSON object an item's value holds."""
    value, is_base64 = tools.checked_value(item)
    try:
        return parse_record(decode_text(value, is_base64))
    except JsonRefused as exc:
        raise invalid(f"each of {name} must hold a JSON object: {exc}") from None


def _encoded(key: str, text: str, description: str = "") -> NewMemory:
    return NewMemory(key, values.encode(text), True, description)


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a result landed: ``key`` ("" when nowhere), whether this call created it, the
    record a replay found there, and why it was refused ("" unless it was)."""

    key: str = ""
    created: bool = False
    replayed: Memory | None = None
    refusal: str = ""


def _publish(
    agent: Agent,
    candidates: list[NewMemory],
    result_id: str,
    markers: list[tuple[str, dict[str, Any]]],
    bests: list[Best],
    now: float,
    rules: Rules,
) -> Plan[dict[str, Any]]:
    placed = yield from _earlier(markers, result_id)
    if not placed.key:
        placed = yield from _place(agent, candidates, result_id, now, rules)
    if placed.refusal:
        return {"status": "refused", "error": f"refused: {placed.refusal}"}
    if not placed.key:
        return {"status": "error", "error": f"result {result_id} collides with other results"}
    marked = []
    for key, marker in markers:
        text = json.dumps({**marker, "result_key": placed.key})
        policy = create_policy(agent, key, text, rules)
        done = yield CreateKey(KeyWrite(agent, _encoded(key, text), now, policy, None, ""))
        status = "created" if done.version is not None else done.reason
        marked.append({"key_name": key, "status": status})
    sent = decode_text(candidates[0].value, candidates[0].is_base64)
    if placed.replayed is not None and placed.replayed.text != sent:
        bests = []  # a replay that changed the record moves nothing: the stored one stands
    moved = []
    for best in bests:
        status = yield from _move(agent, best, placed.key, now, rules)
        moved.append({"metadata_key": best.metadata_key, "status": status})
    return {
        "status": "ok",
        "result_key": placed.key,
        "created": placed.created,
        "markers": marked,
        "bests": moved,
    }


def _earlier(markers: list[tuple[str, dict[str, Any]]], result_id: str) -> Plan[Placed]:
    """The result as an earlier publish placed it, when one of its markers says where."""
    for key, _ in markers:
        (marker,) = yield ReadKeys((key,))
        earlier = record_of(marker.text).get("result_key") if marker is not None else None
        if isinstance(earlier, str) and earlier:
            (stored,) = yield ReadKeys((earlier,))
            if stored is not None and record_of(stored.text).get("id") == result_id:
                return Placed(earlier, replayed=stored)
    return Placed()


def _place(
    agent: Agent, candidates: list[NewMemory], result_id: str, now: float, rules: Rules
) -> Plan[Placed]:
    """Create the result at the first free candidate key (or find it there already)."""
    for item in candidates:
        text = decode_text(item.value, item.is_base64)
        (current,) = yield ReadKeys((item.key_name,))
        if current is None:
            row, refusal = index_result(agent, item.key_name, text)
            if row is None:
                return Placed(refusal=refusal)
            policy = create_policy(agent, item.key_name, text, rules)
            outcome: WriteOutcome = yield CreateKey(KeyWrite(agent, item, now, policy, row, ""))
            if outcome.version is not None:
                return Placed(item.key_name, created=True)
            if outcome.reason == REASON_REFUSED:
                return Placed(refusal=outcome.detail)
            (current,) = yield ReadKeys((item.key_name,))  # created meanwhile
        if current is not None and record_of(current.text).get("id") == result_id:
            return Placed(item.key_name, replayed=current)
    return Placed()


def _move(agent: Agent, best: Best, placed: str, now: float, rules: Rules) -> Plan[str]:
    """Move one best to this result if it beats the stored one; its status."""
    record = {**best.record, "result_key": placed}
    keys = (
        (best.metadata_key,)
        if best.train_py_key is None
        else (best.metadata_key, best.train_py_key)
    )
    for _ in range(MOVE_ATTEMPTS):
        meta, *train = yield ReadKeys(keys, lock=True)
        current = record_of(meta.text) if meta is not None else {}
        track = record.get("track")
        if not isinstance(track, str) or not best_track_confirmed(
            current, track, track if best.org_track else None
        ):
            return "foreign"
        old, new = finite(current.get("val_bpb")), finite(record.get("val_bpb"))
        if new is None or current.get("result_id") == record.get("result_id"):
            return "unchanged"
        if old is not None and not new < old:
            return "unchanged"
        text = json.dumps(
            {
                **record,
                "previous_best_val_bpb": current.get("val_bpb"),
                "previous_best_by": current.get("agent_id"),
                "previous_best_description": current.get("description"),
                "improvement_over_previous": None if old is None else old - new,
            }
        )
        outcome = yield from _write(agent, best.metadata_key, text, meta, now, rules)
        if outcome.reason == REASON_REFUSED:
            return "refused"
        if outcome.version is None:
            continue  # another writer got there first: read again
        if best.train_py is not None and best.train_py_key is not None:
            stored = train[0] if train else None
            source = decode_text(best.train_py.value, best.train_py.is_base64) or ""
            if stored is None or stored.text != source:
                yield from _write(agent, best.train_py_key, source, stored, now, rules)
        return "moved"
    return "unchanged"


def _write(
    agent: Agent,
    key: str,
    text: str,
    stored: Memory | None,
    now: float,
    rules: Rules,
) -> Plan[WriteOutcome]:
    """Create ``key`` when absent, else compare-and-set it on the version read."""
    item, detail = _encoded(key, text), audit_detail(key, text)
    if stored is None:
        policy = create_policy(agent, key, text, rules)
        outcome: WriteOutcome = yield CreateKey(KeyWrite(agent, item, now, policy, None, detail))
        if outcome.reason == REASON_EXISTS:
            return WriteOutcome(reason="lost")
        return outcome
    policy = write_policy(agent, key, text, stored.version, now, rules)
    outcome = yield UpdateKey(KeyWrite(agent, item, now, policy, None, detail), stored.version)
    return outcome
