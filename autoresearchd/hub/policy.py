"""The hub's write policies: who may write which key, and what a result or a best must hold.

The write policies are pure: given the stored row and the
:class:`~autoresearchd.hub.storage.protocol.Evidence` the store read in the write's own transaction,
they say why a write is refused. The rules:

- An agent may update only keys it created; ``results/`` records are write-once and must
  carry the writer's own ``agent_id`` (and a ``train_py_sha256`` that hashes its
  ``train_py``). A claim whose holder released it or let it expire (by the hub's clock)
  may be taken over by anyone, and then belongs to its new holder.
- An agent creates keys only in its own namespace, so no one can squat a key its owner
  will need: ``results/<agent>--…`` and ``best/agent/<agent>`` name the writer (by name or
  by its key slug), as do community claims (``claims/<agent>--<slug>--<hash>``), and
  hypotheses and insights whose key names an author (``<agent>--…``). Content-addressed
  claims (``claims/<track>--<sha12>``) and notes keyed by topic alone name no one.
- The shared ``best/`` pairs (``best/metadata`` + ``best/train_py``, per tier and per
  track) change only by a *verified* agent, by compare-and-set (``if_match``, or a create
  when absent). New metadata names a ``result_key`` under ``@<org>/results/`` that exists,
  was written by this agent while verified, and has the metadata's ``train_py_sha256``;
  its ``val_bpb`` is finite, beats the current best, and is no better than the
  confirmations' mean (below). ``best/train_py`` must hash to its metadata's ``train_py_sha256``.
- Plausibility: a best's ``val_bpb`` must be positive and within its track's bounds (the
  synthetic track's floor is its entropy rate), and the result it names must be of the
  best's own track: ``tracks/<track>/best/...`` names it, the bare ``best/`` is the org's
  primary track (``hub.track``). A result record whose score is implausible is stored but
  indexed as ``invalid``, so it never counts as a replicate.
- Credit for a source goes to its first publisher: the verified agent whose (valid) result
  of that ``train_py_sha256`` on the track the hub indexed first. Only that agent may name
  the source in a shared best, so re-publishing another's source claims nothing.
- Replication (BOINC's quorum): the hub counts the indexed results of the same track and
  ``train_py_sha256`` written by verified agents with a finite ``val_bpb`` and status
  ``keep``, or ``discard`` marked ``provisional``, one per distinct ``seed``. It needs
  ``1 + replicates`` of them (the candidate's run and ``replicates`` confirmations), and
  the confirmations' mean (never the first, selecting run: it was picked for being low)
  must beat the current best. With ``replication = "other-agent"`` only confirmations
  by verified agents other than the writer count (the default): ``replicates`` of them at
  least, and their mean must beat the best significantly, by the daemon's own
  group-sequential test (``autoresearchd.promotion.confirms``: looks at ``replicates`` to
  ``max_confirmations`` confirmations, error ``significance``, the best counted as
  ``replicates`` runs, the noise pooled over this source's runs). A hub run by one person
  may opt into ``replication = "any"``, where the writer's own confirmations count. A
  writer whose runs agree with other agents' needs one confirmation fewer
  (:mod:`autoresearchd.hub.standing` lowers ``replicates`` in the rules it is judged by).
  Otherwise a daemon whose ``experiment.min_replicates`` is at least the hub's
  ``replicates`` satisfies this: it publishes the first run and every confirmation but
  the last as provisional discards, then the last as a ``keep`` whose ``confirmed_bpb``
  is the confirmations' mean.
- The admin agent bypasses every rule.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from autoresearchd.ensue.keys import PERSONAL, SHARED_BEST, slug, split_key
from autoresearchd.hub import strictjson
from autoresearchd.hub.storage.protocol import Evidence, Needs, WritePolicy
from autoresearchd.hub.storage.rows import Agent, Memory, ResultRow
from autoresearchd.hub.strictjson import JsonRefused
from autoresearchd.judging import implausible
from autoresearchd.models import sha256_text
from autoresearchd.promotion import confirms, pooled_noise

CLAIM = re.compile(r"^claims/")
RESULT = re.compile(r"^results/")
#: The seeds the results index can hold: SQLite and PostgreSQL integers are 64-bit.
SEED_RANGE = range(-(2**63), 2**63)
#: Statuses whose finite val_bpb counts toward replication (a discard only if provisional).
COUNTED = ("keep", "discard")
#: How far a claimed val_bpb may sit below the replicates' mean: float summation noise only.
MEAN_TOLERANCE = 1e-9

Replication = Literal["any", "other-agent"]


@dataclass(frozen=True, slots=True)
class Rules:
    """The hub-wide settings the write policies read."""

    replicates: int = 2
    replication: Replication = "other-agent"
    #: The org's primary track: the one its bare ``best/`` keys hold.
    track: str = "synthetic"
    #: Under ``other-agent``: the last look of the confirmations' test, and its error.
    max_confirmations: int = 6
    significance: float = 1e-3


def record_of(text: str | None) -> dict[str, Any]:
    """The JSON object ``text`` holds, or an empty dict when it holds anything else."""
    try:
        return parse_record(text)
    except JsonRefused:
        return {}


def parse_record(text: str | None) -> dict[str, Any]:
    """The JSON object ``text`` holds; :class:`JsonRefused` says why it is not one."""
    if text is None:
        raise JsonRefused("binary, not JSON text")
    record = strictjson.loads(text, allow_nan=True)  # a crash's metrics may be NaN
    if not isinstance(record, dict):
        raise JsonRefused("not a JSON object")
    return record


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None (an int too large for a float is not finite)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# --- results ---------------------------------------------------------------------------


def index_result(agent: Agent, key_name: str, text: str | None) -> tuple[ResultRow | None, str]:
    """The index row of a new ``results/`` record, or a reason to refuse it."""
    org = (split_key(key_name) or ("", ""))[0]
    try:
        record = parse_record(text)
    except JsonRefused as exc:
        return None, f"a result record must be a JSON object: {exc}"
    problem = _result_problem(agent, record)
    if problem:
        return None, problem
    seed, sha = record.get("seed"), record.get("train_py_sha256")
    status, val_bpb = str(record.get("status", "")), finite(record.get("val_bpb"))
    track = str(record.get("track", ""))
    if status in COUNTED and implausible(_number(record.get("val_bpb")), track):
        status = "invalid"  # kept as evidence of what was claimed, never as a replicate
    row = ResultRow(
        key_name=key_name,
        org=org,
        agent=str(record.get("agent_id", agent.name)),
        verified=agent.verified,
        result_id=str(record.get("id", "")),
        track=track,
        train_py_sha256=sha if isinstance(sha, str) else "",
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        status=status,
        provisional=record.get("provisional") is True,
        val_bpb=val_bpb,
        tier=_text(record.get("vram_tier")),
        proposer=_text(record.get("proposer")),
        description=_text(record.get("description")),
        duration_s=max(0.0, finite(record.get("duration_s")) or 0.0),
        parent_sha256=_text(record.get("parent_sha256")),
    )
    return row, ""


def _result_problem(agent: Agent, record: dict[str, Any]) -> str:
    """Why ``record`` cannot be indexed as ``agent``'s result, or ""."""
    if record.get("agent_id") != agent.name and not agent.is_admin:
        return f"a result record must carry agent_id {agent.name!r}, the key's agent"
    source, sha = record.get("train_py"), record.get("train_py_sha256")
    if isinstance(source, str) and isinstance(sha, str) and sha256_text(source) != sha:
        return "train_py_sha256 does not hash train_py"
    seed = record.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed not in SEED_RANGE:
        return "seed must be an integer from -2**63 to 2**63 - 1"
    return ""


def _number(value: Any) -> float | None:
    """A JSON number as a float (NaN and infinities included); None for anything else."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float is past every bound
        return math.inf


def _text(value: Any) -> str:
    """A record's text field, or "" when it is missing or not text."""
    return value if isinstance(value, str) else ""


# --- write policies --------------------------------------------------------------------


def create_policy(agent: Agent, key_name: str, new_text: str | None, rules: Rules) -> WritePolicy:
    """The policy for creating ``key_name``: shared bests follow the best rules, and
    personal keys must be the writer's own."""
    rest = (split_key(key_name) or ("", key_name))[1]
    squatting = None if agent.is_admin else squatter(agent.name, key_name, rest)
    if squatting is not None:
        return _refuse(squatting)
    if agent.is_admin or not SHARED_BEST.match(rest):
        return WritePolicy(lambda current, evidence: None)
    return _best_policy(agent, key_name, rest, new_text, None, rules)


def write_policy(
    agent: Agent,
    key_name: str,
    new_text: str | None,
    if_match: int | None,
    now: float,
    rules: Rules,
) -> WritePolicy:
    """The policy for one update by ``agent`` (see the module docstring)."""
    rest = (split_key(key_name) or ("", key_name))[1]
    if agent.is_admin:
        return WritePolicy(lambda current, evidence: None)
    if SHARED_BEST.match(rest):
        if if_match is None:
            return _refuse("best/ keys change only by compare-and-set: send if_match")
        return _best_policy(agent, key_name, rest, new_text, if_match, rules)
    if RESULT.match(rest):
        return _refuse("results are write-once")

    def check(current: Memory | None, evidence: Evidence) -> str | None:
        if current is None or current.owner == agent.name:
            return None
        if CLAIM.match(rest) and _claim_is_free(current, now):
            return None
        return f"{key_name} belongs to {current.owner}"

    # A claim taken over belongs to its new holder, who alone may renew or release it.
    return WritePolicy(check, takes_ownership=CLAIM.match(rest) is not None)


def squatter(agent: str, key_name: str, rest: str) -> str | None:
    """Why creating ``rest`` would squat another agent's namespace; None when it may."""
    match = PERSONAL.match(rest)
    if match is None:
        return None
    kind, tail = match.group("kind"), match.group("tail")
    own = (agent, slug(agent))
    # Our claims are content-addressed (<track>--<sha12>) and a note may be keyed by its
    # topic alone: only a key that names an author must name the writer.
    authored = {"results": True, "claims": tail.count("--") >= 2}.get(kind, "--" in tail)
    if kind.endswith("best/agent"):
        squats = tail not in own
    else:
        squats = authored and not tail.startswith(tuple(f"{name}--" for name in own))
    if squats:
        return f"{key_name} is not in {agent}'s namespace: create keys only under your own name"
    return None


def _refuse(reason: str) -> WritePolicy:
    return WritePolicy(lambda current, evidence: reason)


def _best_policy(
    agent: Agent,
    key_name: str,
    rest: str,
    new_text: str | None,
    if_match: int | None,
    rules: Rules,
) -> WritePolicy:
    if not agent.verified:
        return _refuse(f"only verified agents may write best/; {agent.name} is not verified")
    if rest.endswith("train_py"):
        return _source_policy(key_name, new_text)
    org = (split_key(key_name) or ("", ""))[0]
    record = record_of(new_text)
    result_key, sha = record.get("result_key"), record.get("train_py_sha256")
    if not isinstance(result_key, str) or not result_key.startswith(f"@{org}/results/"):
        return _refuse(f"best metadata must name its result_key under @{org}/results/")
    if not isinstance(sha, str) or not sha:
        return _refuse("best metadata needs a train_py_sha256")
    claim = _BestClaim(agent.name, record, result_key, sha, rules, _best_track(rest, rules))
    return WritePolicy(claim.check, Needs(result_key=result_key, replicates_of=(org, sha)))


def _best_track(rest: str, rules: Rules) -> str:
    """The track a shared best key holds, as its slug (``tracks/<slug>/``) or by name."""
    match = SHARED_BEST.match(rest)
    prefix = match.group(1) if match else None
    return prefix[len("tracks/") : -1] if prefix else rules.track


def _source_policy(key_name: str, new_text: str | None) -> WritePolicy:
    sibling = key_name[: -len("train_py")] + "metadata"
    sha = sha256_text(new_text) if new_text is not None else ""

    def check(current: Memory | None, evidence: Evidence) -> str | None:
        meta = record_of(evidence.sibling.text if evidence.sibling else None)
        if not sha or meta.get("train_py_sha256") != sha:
            return f"the source does not match the train_py_sha256 in {sibling}"
        return None

    return WritePolicy(check, Needs(sibling_key=sibling))


@dataclass(frozen=True, slots=True)
class _BestClaim:
    """New best metadata, checked against the stored best and the evidence."""

    agent: str
    record: dict[str, Any]
    result_key: str
    sha: str
    rules: Rules
    track: str  # the best key's track: its name, or its slug under tracks/

    def check(self, current: Memory | None, evidence: Evidence) -> str | None:
        new_bpb = finite(self.record.get("val_bpb"))
        if new_bpb is None:
            return "best metadata needs a finite val_bpb"
        old_bpb = finite(record_of(current.text if current else None).get("val_bpb"))
        if old_bpb is not None and not new_bpb < old_bpb:
            return f"val_bpb {new_bpb} does not beat the best {old_bpb}"
        return (
            self._check_result(evidence.result)
            or self._check_plausible(evidence.result, new_bpb)
            or self._check_credit(evidence.result, evidence.replicates)
            or self._check_replicates(evidence.result, evidence.replicates, new_bpb, old_bpb)
        )

    def _check_plausible(self, result: ResultRow | None, new_bpb: float) -> str | None:
        track = result.track if result else ""
        if self.track not in (track, slug(track)):
            return f"the result {self.result_key} is of track {track!r}, not {self.track!r}"
        reason = implausible(new_bpb, track)
        return None if reason is None else f"implausible: {reason}"

    def _check_result(self, result: ResultRow | None) -> str | None:
        if result is None:
            return f"the result {self.result_key} does not exist"
        if result.agent != self.agent:
            return f"the result {self.result_key} is not by {self.agent}"
        if not result.verified:
            return f"the result {self.result_key} was published before its agent was verified"
        if result.train_py_sha256 != self.sha:
            return f"the result {self.result_key} has another train_py_sha256"
        result_id = self.record.get("result_id")
        if result_id is not None and result_id != result.result_id:
            return f"result_id {result_id!r} is not the id of {self.result_key}"
        return None

    def _check_credit(self, result: ResultRow | None, rows: tuple[ResultRow, ...]) -> str | None:
        """A source's credit is its first publisher's: a replay of it claims nothing."""
        track = result.track if result else ""
        first = next(
            (r for r in rows if r.verified and r.track == track and r.status != "invalid"), None
        )
        if first is not None and first.agent != self.agent:
            return f"credit for this source goes to {first.agent}, who published it first"
        return None

    def _check_replicates(
        self,
        result: ResultRow | None,
        rows: tuple[ResultRow, ...],
        new_bpb: float,
        old_bpb: float | None,
    ) -> str | None:
        track = result.track if result else ""
        counted = _counted(rows, track)
        need = 1 + self.rules.replicates
        if len(counted) < need:
            return (
                f"needs {need} verified results with distinct seeds of this source,"
                f" has {len(counted)}"
            )
        # The first run selected the source for being low: only the later ones confirm it.
        fresh = counted[1:] or counted
        if self.rules.replication == "other-agent" and self.rules.replicates > 0:
            fresh = [row for row in counted if row.agent != self.agent]
            if len(fresh) < self.rules.replicates:
                return (
                    f"needs {self.rules.replicates} confirming results by other agents,"
                    f" has {len(fresh)}"
                )
        mean = statistics.fmean(row.val_bpb or 0.0 for row in fresh)
        if self.rules.replication == "other-agent" and self.rules.replicates > 0:
            problem = self._check_significant(counted, fresh, old_bpb)
            if problem:
                return problem
        if old_bpb is not None and not mean < old_bpb:
            return f"the replicates' mean {mean} does not beat the best {old_bpb}"
        if new_bpb < mean - MEAN_TOLERANCE * max(1.0, abs(mean)):
            return f"val_bpb {new_bpb} is better than the replicates' mean {mean}"
        return None

    def _check_significant(
        self, counted: list[ResultRow], fresh: list[ResultRow], old_bpb: float | None
    ) -> str | None:
        """Other agents' confirmations, pooled, must beat the best beyond noise: the
        daemon's group-sequential test (:func:`autoresearchd.promotion.confirms`), with
        looks at ``replicates`` to ``max_confirmations`` confirmations and the best
        counted as ``replicates`` runs. The noise is pooled over this source's runs."""
        if old_bpb is None:
            return None  # nothing scored to beat: a seeded baseline
        values = [row.val_bpb for row in counted if row.val_bpb is not None]
        last = max(self.rules.replicates, self.rules.max_confirmations)
        verdict = confirms(
            [row.val_bpb for row in fresh if row.val_bpb is not None],
            old_bpb,
            self.rules.replicates,
            pooled_noise([values]),
            looks=range(self.rules.replicates, last + 1),
            significance=self.rules.significance,
        )
        if verdict.better:
            return None
        return (
            f"other agents' confirmations (mean {verdict.mean:.6g}, {len(fresh)} runs) do not"
            f" beat the best {old_bpb} significantly: z {verdict.z:.2f} <= {verdict.bound:.2f}"
        )


def _counted(rows: tuple[ResultRow, ...], track: str) -> list[ResultRow]:
    """One row per distinct seed among the results that count toward replication."""
    by_seed: dict[int, ResultRow] = {}
    for row in rows:
        counts = row.status == "keep" or (row.status == "discard" and row.provisional)
        if (
            row.verified
            and counts
            and row.track == track
            and row.val_bpb is not None
            and row.seed is not None
        ):
            by_seed.setdefault(row.seed, row)
    return list(by_seed.values())


def _claim_is_free(current: Memory, now: float) -> bool:
    record = record_of(current.text)
    expires = record.get("expires_at")
    released = record.get("released") is True
    return released or (isinstance(expires, int | float) and expires <= now)
