"""Agent standing on the hub: a writer whose runs agree with other agents' needs fewer
confirmations to move the best.

Standing is the daemon's own (:func:`autoresearchd.standing.standing`), computed here
from the hub's results index: every verified, scored run of the sources the writer has
run. Under ``replication = "other-agent"`` a *trusted* writer (agreements on
:data:`~autoresearchd.standing.TRUSTED_AFTER` sources, no disagreement) needs
``replicates - 1`` other agents' confirmations (never fewer than one); any other writer
needs ``replicates``. Read once per best write, outside its transaction: a standing a
moment old changes only how many confirmations are asked, never what they must show.
"""

from __future__ import annotations

import dataclasses
import math

from autoresearchd.hub.policy import Rules
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.models import Status
from autoresearchd.standing import Run, Standing, standing

#: The runs a standing is read from: the newest of the writer's sources' runs.
MAX_ROWS = 5000
RUNS = (
    "SELECT result_id, agent, track, tier, train_py_sha256, val_bpb, status, proposer,"
    " created_at FROM results WHERE org = ? AND verified = ? AND val_bpb IS NOT NULL"
    " AND status IN ('keep', 'discard') AND train_py_sha256 IN"
    " (SELECT train_py_sha256 FROM results WHERE org = ? AND agent = ?)"
    " ORDER BY created_at DESC LIMIT ?"
)


async def rules_for(store: HubStore, org: str, agent: str, rules: Rules) -> Rules:
    """``rules`` as they apply to ``agent`` writing a best of ``org``."""
    if rules.replication != "other-agent" or rules.replicates <= 1:
        return rules
    rows = await store.select(RUNS, (org, True, org, agent, MAX_ROWS))
    runs = [
        Run(
            id=str(result_id),
            agent_id=str(name),
            track=str(track),
            vram_tier=str(tier or ""),
            train_py_sha256=str(sha),
            val_bpb=float(value),
            status=Status(str(status)),
            proposer=str(proposer or ""),
            started_at=float(created),
        )
        for result_id, name, track, tier, sha, value, status, proposer, created in rows
        if value is not None and math.isfinite(float(value))
    ]
    if not standing(runs).get(agent, Standing()).trusted:
        return rules
    return dataclasses.replace(rules, replicates=rules.replicates - 1)
