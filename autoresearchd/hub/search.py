"""How ``search_memories`` scores a hit: one similarity, computed in Python for every store.

The stores only find candidates (SQLite's FTS5, PostgreSQL's ``tsvector``); their own
ranks (bm25, ``ts_rank``) are neither in [0, 1] in any useful sense nor alike, so a
community client's threshold ("a claim scoring >= 0.92 is the same experiment") meant
nothing on either. :func:`similarity` is the mean of two cosines, of word counts and of
character trigrams, over normalised text: identical text scores 1.0, a changed number
or word scores well below 0.92, and the same data scores the same on both stores.

A memory is scored against its description (what the community embeds, with
``embed_source: "description"``), its text and the short text fields of a JSON record,
and keeps the best score. A
leading tag such as ``[autoresearch] Claim:`` is dropped first, so a claim found by its
bare description scores as identical.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence

from autoresearchd.hub.storage.rows import Hit, Memory

#: A leading ``[tag]`` and ``Label:``, as community descriptions carry them.
_TAG = re.compile(r"^\s*(\[[^\]]{0,64}\]\s*)?([A-Za-z][A-Za-z ]{0,30}:\s+)?")
_WORD = re.compile(r"[0-9]+(?:\.[0-9]+)*|[^\W\d_]+")
#: How many candidates the store is asked for per hit returned: re-scoring reorders them.
CANDIDATES_PER_HIT = 4
MIN_CANDIDATES = 200
#: Long values are scored on their start: a train.py is not a query's match anyway.
MAX_SCORED_CHARS = 4000
#: The longest JSON field scored on its own: a description, not a source file.
MAX_FIELD = 1000


def normalise(text: str) -> str:
    """Lowercase, single-spaced, without a leading community tag."""
    return " ".join(_TAG.sub("", text[:MAX_SCORED_CHARS], count=1).lower().split())


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(count * b[token] for token, count in a.items())
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm


def _trigrams(text: str) -> Counter[str]:
    padded = f"  {text} "
    return Counter(padded[i : i + 3] for i in range(len(padded) - 2))


def similarity(query: str, text: str) -> float:
    """How alike ``query`` and ``text`` are, in [0, 1]; 1.0 for the same normalised text."""
    q, t = normalise(query), normalise(text)
    if not q or not t:
        return 0.0
    if q == t:
        return 1.0
    words = _cosine(Counter(_WORD.findall(q)), Counter(_WORD.findall(t)))
    grams = _cosine(_trigrams(q), _trigrams(t))
    return min(1.0, max(0.0, (words + grams) / 2))


def sources(memory: Memory) -> list[str]:
    """What a memory is scored on: its description, its text and, when the text is a JSON
    object, each short text field of it (a record's ``description``, ``title``...)."""
    text = memory.text or ""
    found = [memory.description, text]
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict):
            found += [v for v in record.values() if isinstance(v, str) and len(v) <= MAX_FIELD]
    return found


def score(query: str, memory: Memory) -> float:
    """A memory's score for ``query``: the best of its :func:`sources`."""
    return max(similarity(query, source) for source in sources(memory))


def candidates(limit: int, most: int) -> int:
    """How many candidates to ask a store for, to return ``limit`` hits."""
    return min(most, max(MIN_CANDIDATES, limit * CANDIDATES_PER_HIT))


def rank(query: str, found: Sequence[Hit], limit: int) -> list[Hit]:
    """The candidates re-scored by :func:`similarity`, best first, ties by key; ``limit``."""
    scored = [Hit(hit.memory, round(score(query, hit.memory), 6)) for hit in found]
    scored.sort(key=lambda hit: (-hit.score, hit.memory.key_name))
    return scored[:limit]
