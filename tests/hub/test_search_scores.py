"""The hub's search score: one similarity in [0, 1], computed alike for every store."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import pytest

from autoresearchd.hub.search import Profiles, normalise, rank, score, similarity
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


def _slow_similarity(query: str, text: str) -> float:
    """The definition, written plainly: the mean of a word cosine and a trigram cosine."""

    def cosine(a: Counter[str], b: Counter[str]) -> float:
        if not a or not b:
            return 0.0
        dot = sum(count * b[token] for token, count in a.items())
        norm = math.sqrt(sum(c * c for c in a.values()))
        return dot / (norm * math.sqrt(sum(c * c for c in b.values())))

    def trigrams(text: str) -> Counter[str]:
        padded = f"  {text} "
        return Counter(padded[i : i + 3] for i in range(len(padded) - 2))

    q, t = normalise(query), normalise(text)
    if not q or not t:
        return 0.0
    if q == t:
        return 1.0
    word = r"[0-9]+(?:\.[0-9]+)*|[^\W\d_]+"
    words = cosine(Counter(re.findall(word, q)), Counter(re.findall(word, t)))
    return min(1.0, max(0.0, (words + cosine(trigrams(q), trigrams(t))) / 2))


def test_the_fast_scoring_agrees_with_the_plain_definition() -> None:
    rng = random.Random(7)
    alphabet = "aab ba.0123 xyzé\n\t"  # repeats, so trigrams overlap themselves ("aaa")
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(300)]
    texts += [IDEA, IDEA.replace("0.05", "0.06"), "aaaa aaaa", "ababab"]
    for query, text in zip(texts, reversed(texts), strict=True):
        assert similarity(query, text) == pytest.approx(_slow_similarity(query, text), abs=1e-12)


def test_a_record_is_scored_on_its_prose_not_its_identifiers() -> None:
    record = json.dumps({"agent_id": "nova", "status": "claimed", "description": IDEA})
    claim = memory("@o/claims/a", record)
    assert score("claimed", claim) < 0.5
    assert score(IDEA, claim) == 1.0
    assert score("learning rate notes", memory("@o/n", "learning rate notes")) == 1.0


def test_a_changed_value_is_scored_afresh_under_the_same_key() -> None:
    before = memory("@o/claims/a", json.dumps({"description": IDEA}))
    after = memory("@o/claims/a", json.dumps({"description": "Use rotary embeddings"}))
    assert score(IDEA, before) == 1.0
    assert score(IDEA, after) < 0.5


def test_the_profile_cache_holds_no_more_than_its_character_budget() -> None:
    profiles = Profiles(max_chars=100)
    texts = [f"text number {i:04d} of the cache test" for i in range(50)]
    for text in texts:
        profiles.text(text)
    assert len(profiles) == 100 // len(texts[0]) == 2
    assert profiles.text("text number 0049 of the cache test").text.endswith("cache test")
