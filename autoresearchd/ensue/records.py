"""The community's records as our types: claims, results, bests, hypotheses and insights.

Pure codecs, no I/O. A record we write carries every field the autoresearch-at-home
clients read (ISO 8601 times, ``experiment_key``, ``status: "claimed"``, the result's git
and delta fields, the hypothesis and insight fields, each at the top level) plus our own
(``id``, ``track``, ``train_py_sha256``, ``seed`` and exact epoch times), so both kinds
of client read it. A record we read may be either kind: one that lacks our fields is
filled in from what the community's carries (the source's hash from the source, the
track from the org's, the id from the key), and times may be epoch seconds or ISO 8601.

``description_*`` give each record's key description in the community's words
(``[autoresearch] Claim: ...``): written with ``embed: true``, it is what their agents
find through ``search_memories``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from autoresearchd.models import Best, Result, Status, sha256_text

#: How long a community claim holds: their client's ``CLAIM_TTL``.
CLAIM_TTL_S = 900.0
#: The ``search_memories`` score from which two descriptions are one experiment.
SIMILAR = 0.92
TAG = "[autoresearch]"
#: The fields of our ``Result``: a record with them (and ``id``) is ours.
_RESULT_FIELDS = frozenset(Result.__dataclass_fields__)
#: Top-level fields of a community result that are not metrics.
_COMMUNITY_FIELDS = frozenset(
    {
        "agent_id",
        "val_bpb",
        "memory_gb",
        "vram_tier",
        "vram_total_gb",
        "status",
        "commit",
        "description",
        "train_py",
        "repo_url",
        "branch",
        "commit_url",
        "completed_at",
        "delta_vs_best",
        "global_best_at_publish",
        "delta_vs_own_best",
        "agent_best_at_publish",
    }
)
_TIERS = (("small", 16.0), ("medium", 24.0), ("large", 48.0))


# --- times and numbers ---------------------------------------------------------------------


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 in UTC, as the community writes times."""
    return datetime.fromtimestamp(ts, UTC).isoformat()


def timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 text (a time without zone is UTC)."""
    number = finite(value)
    if number is not None or not isinstance(value, str) or not value:
        return number
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _when(record: Mapping[str, Any], exact: str, *names: str) -> float | None:
    """The first readable time: our exact epoch field, then the community's fields."""
    for name in (exact, *names):
        found = timestamp(record.get(name))
        if found is not None:
            return found
    return None


def tier_of(vram_gb: float | None) -> str:
    """The community's VRAM tier of a device with ``vram_gb``; empty when unknown."""
    if vram_gb is None:
        return ""
    return next((name for name, top in _TIERS if vram_gb <= top), "xl")


# --- the community's experiment keys ---------------------------------------------------------


def _slugify(text: str, max_len: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().strip()).strip("-")[:max_len].rstrip("-")


def experiment_tail(description: str) -> str:
    """``<slug>--<hash6>``: the part of a community experiment key every agent shares."""
    digest = hashlib.sha256(description.lower().strip().encode("utf-8")).hexdigest()[:6]
    return f"{_slugify(description, 40)}--{digest}"


def experiment_tails(description: str) -> set[str]:
    """Every ``<slug>--<hash6>`` a community client may have keyed ``description`` by.

    Their client hashes the lowercased, stripped description and cuts the slug at 40
    characters; the key layout as documented hashes the description as it is, and other
    versions cut the slug at 48.
    """
    digests = {
        hashlib.sha256(text.encode("utf-8")).hexdigest()[:6]
        for text in (description, description.lower().strip())
    }
    slugs = {_slugify(description, n) for n in (40, 48)}
    return {f"{slug}--{digest}" for slug in slugs for digest in digests}


def experiment_key(agent_id: str, description: str) -> str:
    """The community's key for ``agent_id`` running ``description``: ``<agent>--<slug>--<h6>``."""
    return f"{_slugify(agent_id, 20) or 'unknown'}--{experiment_tail(description)}"


def same_experiment(a: str, b: str) -> bool:
    """Whether two descriptions name one experiment, as the community's hash compares them."""
    return a.lower().strip() == b.lower().strip()


# --- claims --------------------------------------------------------------------------------


def claim_record(
    *, agent_id: str, track: str, sha256: str, description: str, now: float, ttl_s: float
) -> dict[str, Any]:
    """A claim both kinds of client read: the community's fields, then ours."""
    return {
        "agent_id": agent_id,
        "description": description,
        "experiment_key": experiment_key(agent_id, description),
        "claimed_at": iso(now),
        "expected_duration_seconds": round(ttl_s),
        "status": "claimed",
        "track": track,
        "sha256": sha256,
        "claimed_ts": now,
        "expires_at": now + ttl_s,
        "released": False,
    }


def released_claim(record: Mapping[str, Any], now: float) -> dict[str, Any]:
    return {**record, "released": True, "status": "released", "expires_at": now}


def is_ours(record: Mapping[str, Any]) -> bool:
    """Whether a claim was written by our client (content-addressed, with an expiry)."""
    return isinstance(record.get("sha256"), str) and "expires_at" in record


def claim_times(record: Mapping[str, Any]) -> tuple[float, float] | None:
    """(claimed at, expires at) of either kind of claim; None when it has no readable time."""
    claimed = _when(record, "claimed_ts", "claimed_at")
    expires = finite(record.get("expires_at"))
    if expires is None and claimed is not None:
        expires = claimed + CLAIM_TTL_S
    if claimed is None:
        claimed = expires
    return None if claimed is None or expires is None else (claimed, expires)


def claim_is_live(record: Mapping[str, Any], now: float) -> bool:
    """A claim someone still holds: not released, not done, not expired."""
    if record.get("released") is True or record.get("status", "claimed") != "claimed":
        return False
    times = claim_times(record)
    return times is not None and times[1] > now


def description_claim(description: str) -> str:
    return f"{TAG} Claim: {description}"


# --- results -------------------------------------------------------------------------------


def result_record(
    result: Result,
    *,
    global_best: float | None = None,
    agent_best: float | None = None,
) -> dict[str, Any]:
    """Our result with every community field: ISO ``completed_at``, metrics at the top."""
    record: dict[str, Any] = {
        key: value for key, value in result.metrics.items() if key not in _COMMUNITY_FIELDS
    }
    record.update(result.to_record())
    bpb = result.val_bpb
    record.update(
        vram_total_gb=round(result.memory_gb, 1),
        commit=None,
        repo_url=None,
        branch=None,
        commit_url=None,
        completed_at=iso(result.completed_at),
        completed_ts=result.completed_at,
        global_best_at_publish=global_best,
        delta_vs_best=result.delta_vs_best,  # ours: what the worker judged against
        agent_best_at_publish=agent_best,
        delta_vs_own_best=_delta(bpb, agent_best),
    )
    return record


def _delta(bpb: float | None, reference: float | None) -> float | None:
    return None if bpb is None or reference is None else bpb - reference


def description_result(result: Result) -> str:
    """The experiment's own words: a client that searches results for the description it
    is about to claim (the community's dedup) finds this one as the same experiment."""
    return f"{TAG} Result: {result.description}"


def read_result(record: Mapping[str, Any], *, key: str, track: str) -> Result | None:
    """A result of either client; None for a record that is no result at all.

    ``key`` (the org-relative tail after ``results/``) becomes a community record's id;
    ``track`` is the org's own, which a record without one belongs to.
    """
    ours = _our_result(record)
    return ours if ours is not None else _community_result(record, key, track)


def _our_result(record: Mapping[str, Any]) -> Result | None:
    if not all(isinstance(record.get(name), str) for name in ("id", "track", "train_py_sha256")):
        return None
    data = {key: value for key, value in record.items() if key in _RESULT_FIELDS}
    completed = _when(record, "completed_ts", "completed_at")
    try:
        data["completed_at"] = completed if completed is not None else 0.0
        data["started_at"] = timestamp(data.get("started_at")) or data["completed_at"]
        return Result.from_record(data)  # its checks of curves and fractions from strangers
    except (TypeError, ValueError, KeyError):
        return None


def _community_result(record: Mapping[str, Any], key: str, track: str) -> Result | None:
    try:
        status = Status(str(record.get("status", "")))
    except ValueError:
        return None
    source = record.get("train_py")
    source = source if isinstance(source, str) else ""
    completed = _when(record, "completed_ts", "completed_at") or 0.0
    vram = finite(record.get("vram_total_gb"))
    memory = finite(record.get("memory_gb"))
    tier = record.get("vram_tier")
    metrics = {
        name: float(value)
        for name, value in record.items()
        if name not in _COMMUNITY_FIELDS and finite(value) is not None
    }
    duration = finite(record.get("total_seconds")) or finite(record.get("training_seconds"))
    return Result(
        id=key,
        agent_id=str(record.get("agent_id") or "unknown"),
        track=str(record.get("track") or track),
        status=status,
        val_bpb=finite(record.get("val_bpb")),
        description=str(record.get("description") or ""),
        train_py=source,
        train_py_sha256=sha256_text(source),
        parent_sha256=None,
        seed=0,  # the community's runs name no seed
        device_name="",
        device_uuid="",
        memory_gb=vram if vram is not None else memory or 0.0,
        vram_tier=tier if isinstance(tier, str) and tier else tier_of(vram),
        started_at=completed,
        completed_at=completed,
        duration_s=duration or 0.0,
        delta_vs_best=finite(record.get("delta_vs_best")),
        metrics=metrics,
        proposer="community",
    )


# --- bests ---------------------------------------------------------------------------------


def best_record(
    result: Result,
    *,
    result_key: str,
    tier: str | None,
    bpb: float,
    now: float,
    previous: Mapping[str, Any],
) -> dict[str, Any]:
    """A best's metadata: ours (hash, result key) with the community's fields beside it."""
    before = finite(previous.get("val_bpb"))
    return {
        "track": result.track,
        "tier": tier,
        "val_bpb": bpb,
        "best_val_bpb": bpb,
        "train_py_sha256": result.train_py_sha256,
        "result_id": result.id,
        "result_key": result_key,
        "agent_id": result.agent_id,
        "achieved_by": result.agent_id,
        "status": "keep",
        "description": result.description,
        "memory_gb": result.memory_gb,
        "vram_tier": result.vram_tier,
        "vram_total_gb": round(result.memory_gb, 1),
        "updated_at": now,
        "achieved_at": iso(now),
        "completed_at": iso(result.completed_at),
        "previous_best_val_bpb": previous.get("val_bpb"),
        "previous_best_by": previous.get("agent_id"),
        "previous_best_description": previous.get("description"),
        "improvement_over_previous": None if before is None else before - bpb,
    }


def best_track_confirmed(current: Mapping[str, Any], track: str, org_track: str | None) -> bool:
    """Whether a stored best's metadata is of ``track``, so ours to read and to move.

    A record that names its track answers itself. One without a track but with our
    ``train_py_sha256`` was written by our own tools for the org's track (a hub's seeded
    baseline). A community record names no track: it is the org's own, which is ours only
    when ``org_track`` (the operator's word for it) is ``track``.
    """
    if not current:
        return True
    named = current.get("track")
    if isinstance(named, str) and named:
        return named == track
    if isinstance(current.get("train_py_sha256"), str):
        return True
    return org_track == track


def read_best(record: Mapping[str, Any], source: str, track: str, tier: str | None) -> Best | None:
    """The best a metadata record and its source make; None when they disagree.

    Ours names the source's hash; a community record has none, so its source is checked
    against the copy its metadata carries, if any, and hashed.
    """
    expected = record.get("train_py_sha256")
    inline = record.get("train_py")
    if isinstance(expected, str):
        if sha256_text(source) != expected:
            return None
    elif isinstance(inline, str) and inline != source:
        return None
    bpb = finite(record.get("val_bpb"))
    return Best(
        track=track,
        tier=tier,
        val_bpb=math.inf if bpb is None else bpb,  # a seeded baseline has no score yet
        train_py=source,
        train_py_sha256=sha256_text(source),
        result_id=str(record.get("result_id") or ""),
        agent_id=str(record.get("agent_id") or record.get("achieved_by") or ""),
        updated_at=_when(record, "updated_at", "achieved_at", "completed_at") or 0.0,
    )


# --- hypotheses and insights ---------------------------------------------------------------


class NoteFields(NamedTuple):
    """A hypothesis or insight as read: what the memory's ``Note`` holds."""

    key: str
    agent_id: str
    value: dict[str, Any]
    created_at: float


def note_record(kind: str, note: NoteFields) -> dict[str, Any]:
    """A note both kinds of client read: its value nested (ours) and spread (theirs)."""
    value = note.value
    common = {
        "agent_id": note.agent_id,
        "evidence_keys": _list(value.get("evidence_keys")),
        "key": note.key,
        "created_ts": note.created_at,
        "value": value,
    }
    if kind == "insights":
        text = value.get("insight") or value.get("text") or value.get("title") or note.key
        return {**value, **common, "insight": str(text), "posted_at": iso(note.created_at)}
    title = value.get("title") or value.get("text") or note.key
    return {
        **value,
        **common,
        "title": str(title),
        "hypothesis": str(value.get("hypothesis") or value.get("text") or title),
        "suggested_config": value.get("suggested_config"),
        "priority": value.get("priority", 3),
        "created_at": iso(note.created_at),
    }


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def description_note(kind: str, record: Mapping[str, Any]) -> str:
    """The key description of a :func:`note_record`."""
    if kind == "insights":
        return f"{TAG} Insight by {record.get('agent_id')}: {record.get('insight')}"
    return f"{TAG} Hypothesis: {record.get('title')}"


def read_note(record: Mapping[str, Any], *, key: str, track: str) -> NoteFields | None:
    """A note of either client. A community note belongs to the org's ``track``."""
    value, created = record.get("value"), _when(record, "created_ts", "created_at", "posted_at")
    if isinstance(value, dict) and isinstance(record.get("key"), str):
        when = created if created is not None else 0.0
        return NoteFields(record["key"], str(record.get("agent_id", "")), value, when)
    if not ("title" in record or "insight" in record or "hypothesis" in record):
        return None
    community = {"track": track, **record}
    return NoteFields(key, str(record.get("agent_id") or "unknown"), community, created or 0.0)
