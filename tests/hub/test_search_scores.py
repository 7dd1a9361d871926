"""The hub's search score: one similarity in [0, 1], computed alike for every store."""

from __future__ import annotations

import json

from autoresearchd.hub.search import normalise, rank, score, similarity
from autoresearchd.hub.storage.rows import Hit, Memory

IDEA = "Raise the matrix learning rate from 0.04 to 0.05 with warmup 200"


def memory(key: str, value: str, description: str = "") -> Memory:
    return Memory(key, "nova", description, value, False, 1, 0.0, 0.0)


def test_identical_text_scores_one_and_unrelated_text_near_zero() -> None:
    assert similarity(IDEA, IDEA) == 1.0
    assert similarity(IDEA, "  " + IDEA.upper() + " ") == 1.0
    assert similarity(IDEA, "zzz qqq") < 0.1
    assert similarity("", IDEA) == 0.0


def test_a_community_tag_is_not_part_of_the_text() -> None:
    assert normalise(f"[autoresearch] Claim: {IDEA}") == IDEA.lower()
    assert similarity(IDEA, f"[autoresearch] Claim: {IDEA}") == 1.0


def test_a_changed_number_scores_below_identical_and_above_another_idea() -> None:
    near = similarity(IDEA, IDEA.replace("0.05", "0.06"))
    other = similarity(IDEA, "Use rotary embeddings with base 50000 instead of 10000")
    assert other < near < 1.0
    assert all(0.0 <= s <= 1.0 for s in (near, other))


def test_a_record_scores_by_its_best_source() -> None:
    claim = memory("@o/claims/a", json.dumps({"description": IDEA, "status": "claimed"}))
    described = memory("@o/claims/b", "{}", f"[autoresearch] Claim: {IDEA}")
    plain = memory("@o/insights/c", "learning rate notes")
    assert score(IDEA, claim) == 1.0 and score(IDEA, described) == 1.0
    assert score(IDEA, plain) < 0.5


def test_rank_orders_by_score_then_key_and_ignores_the_stores_own_rank() -> None:
    hits = [
        Hit(memory("@o/z", "learning rate notes"), 0.9),
        Hit(memory("@o/b", IDEA), 0.0),
        Hit(memory("@o/a", IDEA), 0.1),
    ]
    ranked = rank(IDEA, hits, 2)
    assert [(h.memory.key_name, h.score) for h in ranked] == [("@o/a", 1.0), ("@o/b", 1.0)]
