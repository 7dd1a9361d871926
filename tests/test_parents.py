"""Choosing a parent from a network best under the trust policy, and reporting refusals once."""

from __future__ import annotations

import pytest

from autoresearchd.models import Best, Candidate, sha256_text
from autoresearchd.parents import Parents
from autoresearchd.testing import ok_script

BASELINE = Candidate(ok_script(lr=0.01), parent_sha256=None, description="baseline")
HOSTILE = BASELINE.source + "\nimport socket\n"


def best_of(source: str) -> Best:
    return Best("synthetic", None, 1.0, source, sha256_text(source), "r1", "stranger", 0.0)


@pytest.mark.parametrize("trust", ["sandboxed", "any"])
def test_other_policies_take_any_best_as_it_is(trust: str) -> None:
    parent, refusal = Parents(set()).choose(best_of(HOSTILE), BASELINE, trust)
    assert (parent.source, parent.proposer, parent.parent_sha256) == (HOSTILE, "memory", None)
    assert refusal is None


def test_a_best_with_new_values_in_space_is_accepted() -> None:
    parent, refusal = Parents(set()).choose(best_of(ok_script(lr=0.02)), BASELINE, "params-only")
    assert parent.source == ok_script(lr=0.02) and refusal is None


def test_a_best_with_changed_code_is_refused_once_and_falls_back_to_the_baseline() -> None:
    refused: set[str] = set()
    parents = Parents(refused)
    parent, refusal = parents.choose(best_of(HOSTILE), BASELINE, "params-only")
    assert parent == BASELINE
    assert refusal is not None and refusal.candidate.source == HOSTILE
    assert refusal.reason.startswith("line ") and "import socket" in refusal.reason
    assert refused == {sha256_text(HOSTILE)}
    again, second = parents.choose(best_of(HOSTILE), BASELINE, "params-only")
    assert (again, second) == (BASELINE, None)


def test_a_refused_best_falls_back_to_the_last_accepted_one() -> None:
    parents = Parents(set())
    accepted, _ = parents.choose(best_of(ok_script(lr=0.02)), BASELINE, "params-only")
    parent, refusal = parents.choose(best_of(HOSTILE), BASELINE, "params-only")
    assert parent == accepted and refusal is not None


def test_a_best_another_worker_refused_is_skipped_without_a_second_report() -> None:
    shared = {sha256_text(HOSTILE)}
    parent, refusal = Parents(shared).choose(best_of(HOSTILE), BASELINE, "params-only")
    assert (parent, refusal) == (BASELINE, None)
