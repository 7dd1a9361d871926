"""The SQL both dialects share: column lists, the dashboard's tables, and reading rows back.

The statements here are written in the SQL both databases accept, with ``?`` placeholders
(PostgreSQL's dialect turns them into ``%s``). A value a database cannot hold (an integer past
64 bits, text that is not Unicode, NUL in PostgreSQL text) fails the write with a 400
:class:`HubError` from :func:`unstorable`: the request's fault, not an outage.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from autoresearchd.errors import HubError
from autoresearchd.hub.storage.rows import Memory, ResultRow

COLUMNS = (
    "key_name, owner, description, value, is_base64, version, created_at, updated_at, verified"
)
RESULT_COLUMNS = (
    "key_name, org, agent, verified, result_id, track, train_py_sha256, seed, status,"
    " provisional, val_bpb"
)
#: The columns of ``results`` only the dashboard reads (:meth:`ResultRow.details`).
DETAIL_COLUMNS = "tier, proposer, description, duration_s, parent_sha256"
#: The agent who first published a result's source (credit goes to them), found as the
#: row is inserted; parameters: org, train_py_sha256, and the writer (when it is first).
FIRST_AGENT = (
    "coalesce((SELECT f.agent FROM results f WHERE f.org = ? AND f.train_py_sha256 = ?"
    " ORDER BY f.created_at, f.key_name LIMIT 1), ?)"
)
#: The dashboard's indexes (schema 3): every page it serves reads one of them, newest first.
DASHBOARD_INDEXES = """
CREATE INDEX IF NOT EXISTS results_by_time ON results (org, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_agent ON results (org, agent, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_status ON results (org, status, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_tier ON results (org, tier, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_proposer ON results (org, proposer, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_track ON results (org, track, created_at, key_name);
CREATE INDEX IF NOT EXISTS results_by_track_tier ON results
    (org, track, tier, created_at, key_name);
CREATE TABLE IF NOT EXISTS standings (
    org TEXT NOT NULL,
    agent TEXT NOT NULL,
    runs BIGINT NOT NULL,
    keeps BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    confirmations BIGINT NOT NULL,
    PRIMARY KEY (org, agent)
);
CREATE INDEX IF NOT EXISTS results_by_id ON results (org, result_id)
"""
#: Schema 3 fills what older rows lack: who first published each source, and the
#: standings (the tier and the other copied fields of older rows stay empty).
DASHBOARD_BACKFILL = """
UPDATE results SET first_agent = (SELECT f.agent FROM results f WHERE f.org = results.org
    AND f.train_py_sha256 = results.train_py_sha256 ORDER BY f.created_at, f.key_name LIMIT 1)
    WHERE first_agent = '';
INSERT INTO standings (org, agent, runs, keeps, seconds, confirmations)
    SELECT org, agent, count(*), sum(CASE WHEN status = 'keep' THEN 1 ELSE 0 END),
    sum(duration_s), sum(CASE WHEN val_bpb IS NOT NULL AND first_agent <> agent THEN 1 ELSE 0
    END) FROM results WHERE true GROUP BY org, agent
"""
#: Each indexed result adds itself to its agent's standing, in the same transaction, so the
#: leaderboard reads one row per agent however many results there are.
STANDING_UPSERT = (
    "INSERT INTO standings (org, agent, runs, keeps, seconds, confirmations)"
    " SELECT org, agent, 1, CASE WHEN status = 'keep' THEN 1 ELSE 0 END, duration_s,"
    " CASE WHEN val_bpb IS NOT NULL AND first_agent <> agent THEN 1 ELSE 0 END"
    " FROM results WHERE key_name = ?"
    " ON CONFLICT (org, agent) DO UPDATE SET runs = standings.runs + 1,"
    " keeps = standings.keeps + excluded.keeps, seconds = standings.seconds + excluded.seconds,"
    " confirmations = standings.confirmations + excluded.confirmations"
)
#: The most rows one replication query returns; a source run more often is an outlier.
MAX_CONFIRMATIONS = 1000
#: Words of a search query beyond this many are ignored (by both stores).
MAX_QUERY_WORDS = 32


def memory_of(row: Sequence[Any]) -> Memory:
    """A :class:`Memory` from a row of :data:`COLUMNS`, in either database."""
    k, o, d, v, b, ver, c, u, ok = row
    return Memory(str(k), str(o), str(d), str(v), bool(b), int(ver), float(c), float(u), bool(ok))


def result_of(row: Sequence[Any]) -> ResultRow:
    """A :class:`ResultRow` from a row of :data:`RESULT_COLUMNS`, in either database."""
    k, org, agent, ok, rid, track, sha, seed, status, prov, bpb = row
    return ResultRow(
        str(k),
        str(org),
        str(agent),
        bool(ok),
        str(rid),
        str(track),
        str(sha),
        None if seed is None else int(seed),
        str(status),
        bool(prov),
        None if bpb is None else float(bpb),
    )


def revoked_key_hash() -> str:
    """What replaces a revoked key's hash: no sha256 hex digest, so no key matches it."""
    return f"revoked:{secrets.token_hex(16)}"


def like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def unstorable(exc: Exception) -> HubError:
    """The 400 for a value a database cannot hold (an integer past 64 bits, text that is
    not Unicode): the request is at fault, so it must not read as an outage to retry."""
    problem = " ".join(str(exc).split())
    return HubError(f"cannot store the value: {problem}", status=400, code="unstorable")


def check_read_only(sql: str) -> None:
    """Refuse anything but a query: ``HubStore.select`` runs reads only."""
    if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
        raise HubError("select runs SELECT statements only")
