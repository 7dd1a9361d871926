"""Independent confirmation: which claims a daemon reruns, how often, and who keeps standing."""

from __future__ import annotations

import math
from typing import Any

import pytest

from autoresearchd.config_loader import parse_config
from autoresearchd.models import Best, Result, Status, sha256_text
from autoresearchd.standing import RESTATED, TRUSTED_AFTER, Standing, flags, standing
from autoresearchd.worker.confirming import (
    Claim,
    choose,
    claims,
    needed,
    others_runs,
    restatement,
    share,
)
from tests.memory.conformance import TRACK, make_result

EXPERIMENT = parse_config({"experiment": {"confirm_share": 0.1, "confirm_share_max": 0.5}})
BEST = Best(TRACK, "xl", 3.0, "LR = 0\n", sha256_text("LR = 0\n"), "run-best", "carol", 0.0)


def run(agent: str, source: str, value: float, **changes: Any) -> Result:
    """A provisional run of ``source`` by ``agent``: a selecting run or a confirmation."""
    fields = {"status": Status.DISCARD, "provisional": True}
    return make_result(agent_id=agent, train_py=source, val_bpb=value, **(fields | changes))


def keep(agent: str, source: str, value: float) -> Result:
    return make_result(agent_id=agent, train_py=source, val_bpb=value, confirmed_bpb=value)


def test_a_claim_is_another_agents_keep_that_would_move_the_best() -> None:
    history = [
        keep("alice", "A = 1\n", 2.9),  # bob's to confirm
        keep("bob", "B = 1\n", 2.8),  # bob's own: never his to confirm
        keep("alice", "C = 1\n", 3.1),  # would not move the best
        keep("alice", BEST.train_py, 2.9),  # the best already
        keep("carol", "D = 1\n", 2.9),
        make_result(agent_id="alice", train_py="E = 1\n", val_bpb=2.9, vram_tier="cpu"),
        keep("alice", "F = 1\n", 2.9).with_(proposer=RESTATED),
    ]
    found = claims(history, "bob", TRACK, "xl", BEST, limit=6)
    assert sorted(c.keep.train_py for c in found) == ["A = 1\n", "D = 1\n"]


def test_a_claim_stops_drawing_confirmations_at_the_limit_or_once_refuted() -> None:
    source = "A = 1\n"
    claim = keep("alice", source, 2.9)
    confirmed = [claim, run("bob", source, 2.91, seed=1), run("carol", source, 2.9, seed=2)]
    assert [len(c.confirmations) for c in claims(confirmed, "bob", TRACK, "xl", BEST, 3)] == [2]
    assert claims(confirmed, "bob", TRACK, "xl", BEST, limit=2) == []
    refuted = [claim, run("carol", source, 3.02, seed=3)]
    assert claims(refuted, "bob", TRACK, "xl", BEST, limit=6) == []
    # One unlucky confirmation refutes nothing while two are wanted.
    assert len(claims(refuted, "bob", TRACK, "xl", BEST, limit=6, refute_after=2)) == 1


def test_confirmations_count_one_per_seed_and_never_the_claimants_own() -> None:
    source = "A = 1\n"
    claim = keep("alice", source, 2.9)
    history = [
        claim,
        run("alice", source, 2.85),
        run("bob", source, 2.91, seed=7),
        run("bob", source, 2.95, seed=7),
        run("carol", source, 2.92, seed=8),
        make_result(agent_id="dave", train_py=source, val_bpb=None, status=Status.CRASH),
    ]
    assert sorted(others_runs(history, claim)) == [2.91, 2.92]


def test_the_share_rises_while_claims_lack_confirmations() -> None:
    experiment = EXPERIMENT.experiment
    bare = Claim(keep("alice", "A = 1\n", 2.9), ())
    done = Claim(keep("alice", "B = 1\n", 2.9), (2.9, 2.9))
    assert share([], experiment, {}) == 0.0
    assert share([done], experiment, {}) == pytest.approx(0.1)
    assert share([bare], experiment, {}) == pytest.approx(0.3)
    assert share([bare, bare, done], experiment, {}) == pytest.approx(0.4)
    # A trusted agent's claim needs one confirmation fewer, so one in hand is enough.
    trusted = {"alice": Standing(agrees=TRUSTED_AFTER)}
    half = Claim(bare.keep, (2.9,))
    assert needed(half, experiment, trusted) == 1 and needed(half, experiment, {}) == 2
    assert share([half], experiment, trusted) == pytest.approx(0.1)


def test_disputed_agents_claims_come_first_and_trusted_ones_last() -> None:
    trusted, plain, disputed = (
        Claim(keep(agent, f"{agent} = 1\n", 2.9), ()) for agent in ("alice", "bob", "carol")
    )
    standings = {"alice": Standing(agrees=5), "carol": Standing(agrees=5, disagrees=1)}
    assert choose([trusted, plain, disputed], standings) is disputed
    assert choose([trusted, plain], standings) is plain
    fewer = Claim(keep("bob", "B = 2\n", 2.9), ())
    more = Claim(plain.keep, (2.9,))
    assert choose([more, fewer], {}) is fewer


def history_of_agreement(liar_gap: float) -> list[Result]:
    """alice and bob run four sources each; carol's runs of them sit ``liar_gap`` lower."""
    history = []
    for index in range(4):
        source = f"S = {index}\n"
        base = 3.0 - 0.01 * index
        history.append(run("alice", source, base, started_at=float(index)))  # selecting
        history += [run("alice", source, base + 0.001 * k, started_at=10.0 + k) for k in (1, 2)]
        history += [run("bob", source, base - 0.001 * k, started_at=20.0 + k) for k in (1, 2)]
        history += [run("carol", source, base - liar_gap, started_at=30.0)]
    # Some spread for the pooled noise: about 0.002.
    history += [run("dave", "N = 1\n", v) for v in (3.0, 3.002, 2.998, 3.001, 2.999)]
    return history


def test_agents_that_agree_gain_standing_and_one_that_disagrees_loses_it() -> None:
    honest = standing(history_of_agreement(liar_gap=0.0))
    assert honest["alice"].trusted and honest["bob"].trusted and not honest["carol"].lost
    lying = standing(history_of_agreement(liar_gap=0.2))
    assert lying["carol"] == Standing(agrees=0, disagrees=4) and lying["carol"].lost
    assert not lying["alice"].lost  # carol's runs pull the others' mean only so far
    assert flags(history_of_agreement(liar_gap=0.2)) == {
        "carol": "disputed: 4 of its sources disagree with other agents' runs"
    }
    assert flags(history_of_agreement(liar_gap=0.0)) == {}


def test_a_restatement_carries_the_confirmations_mean_and_the_claims_seed() -> None:
    claim = keep("alice", "A = 1\n", 2.85)
    restated = restatement(claim, (2.9, 2.92), now=5.0)
    assert restated.id != claim.id and restated.seed == claim.seed
    assert (restated.status, restated.proposer, restated.confirms) == (
        Status.KEEP,
        RESTATED,
        claim.id,
    )
    assert math.isclose(restated.best_bpb or 0.0, 2.91)
    assert restated.metrics["confirmations"] == 2.0
