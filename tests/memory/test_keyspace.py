"""The Ensue client's key names under ``@<org>/``: the layout community clients share."""

from __future__ import annotations

from autoresearchd.ensue.keys import short_hash
from autoresearchd.memory.ensue_client.keyspace import Keyspace
from tests.memory.conformance import make_result

SHA = "0123456789abcdef" * 4


def test_the_primary_track_has_the_bare_best_keys_and_any_other_its_own_folder() -> None:
    keys = Keyspace("lab", "t1", org_track_declared=True)
    assert keys.best_base("t1", None) == "@lab/best/"
    assert keys.best_base("t1", "xl") == "@lab/best/tier/xl/"
    assert keys.best_base("Other Track", None) == "@lab/tracks/other-track/best/"
    assert keys.agent_best(make_result(agent_id="Alice B", track="t1")) == "@lab/best/agent/alice-b"


def test_records_that_name_no_track_are_of_the_declared_track_else_of_the_org() -> None:
    declared = Keyspace("lab", "t1", org_track_declared=True)
    assert (declared.org_track, declared.declared_track) == ("t1", "t1")
    undeclared = Keyspace("lab", "t1", org_track_declared=False)
    assert (undeclared.org_track, undeclared.declared_track) == ("lab", None)


def test_a_result_key_hashes_its_id_so_a_replay_finds_the_same_key() -> None:
    keys = Keyspace("lab", "t1", org_track_declared=False)
    result = make_result(id="run-7", agent_id="alice", description="LR 0.1 -> 0.2")
    first, fallback = keys.results(result)
    assert first == f"@lab/results/alice--lr-0-1-0-2--{short_hash('run-7', 6)}"
    assert fallback == f"@lab/results/alice--lr-0-1-0-2--{short_hash('run-7', 16)}"
    assert keys.published("run-7") == f"@lab/published/run-7--{short_hash('run-7', 6)}"


def test_claims_and_run_markers_are_named_by_track_and_source_hash() -> None:
    keys = Keyspace("lab", "t1", org_track_declared=False)
    assert keys.claim("t1", SHA) == "@lab/claims/t1--0123456789ab"
    assert keys.runs("t1", SHA) == f"@lab/runs/t1--{SHA}"


def test_a_note_key_with_unsafe_characters_is_slugged_and_hashed() -> None:
    keys = Keyspace("lab", "t1", org_track_declared=False)
    assert keys.note("insights", "warmup_2.v1") == "@lab/insights/warmup_2.v1"
    odd = "LR warmup? yes/no"
    assert keys.note("hypotheses", odd) == f"@lab/hypotheses/lr-warmup-yes-no--{short_hash(odd, 6)}"


def test_reply_names_become_full_names_and_tails_drop_their_folder() -> None:
    keys = Keyspace("lab", "t1", org_track_declared=False)
    assert keys.full("results/a") == "@lab/results/a"
    assert keys.full("@other/results/a") == "@other/results/a"
    assert keys.tail("@lab/results/a--b", "@lab/results/") == "a--b"
    assert keys.tail("@other/x", "@lab/results/") == "@other/x"
