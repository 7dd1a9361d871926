"""How ``search_memories`` scores a hit: one similarity, computed in Python for every store.

The stores only find candidates (SQLite's FTS5, PostgreSQL's ``tsvector``); their own
ranks (bm25, ``ts_rank``) are neither in [0, 1] in any useful sense nor alike, so a
community client's threshold ("a claim scoring >= 0.92 is the same experiment") meant
nothing on either. :func:`similarity` is the mean of two cosines, of word counts and of
character trigrams, over normalised text: identical text scores 1.0, a changed number
or word scores well below 0.92, and the same data scores the same on both stores.

A memory is scored against its description (what the community embeds, with
``embed_source: "description"``) and its text; when the text is a JSON object, against the
object's prose fields instead (a record's ``description``, ``title``, ``hypothesis``...: a
string with a space in it, up to :data:`MAX_FIELD` characters), not its raw JSON or its
identifiers. It keeps the best score. A leading tag such as ``[autoresearch] Claim:`` is
dropped first, so a claim found by its bare description scores as identical.

Scoring is on every search's path, over hundreds of candidates, so its cost is kept down
without changing a score: each request profiles its query once, a text's profile (its
counts and their norms) is kept in a bounded cache (:class:`Profiles`), the counting is
done by the regex engine and :class:`~collections.Counter`, and a dot product is over the
keys two counts share, found by a set intersection (:class:`Counts`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from autoresearchd.hub.storage.rows import Hit, Memory

#: A leading ``[tag]`` and ``Label:``, as community descriptions carry them.
_TAG = re.compile(r"^\s*(\[[^\]]{0,64}\]\s*)?([A-Za-z][A-Za-z ]{0,30}:\s+)?")
_WORD = re.compile(r"[0-9]+(?:\.[0-9]+)*|[^\W\d_]+")
#: Every overlapping three characters, found in one pass of the regex engine.
_TRIGRAM = re.compile(r"(?=(...))", re.DOTALL)
#: How many candidates the store is asked for per hit returned: re-scoring reorders them.
CANDIDATES_PER_HIT = 4
MIN_CANDIDATES = 50
#: Long values are scored on their start: a train.py is not a query's match anyway.
MAX_SCORED_CHARS = 4000
#: The longest JSON field scored on its own: a description, not a source file.
MAX_FIELD = 1000
#: The text the profile cache holds at most, in characters (about 20 bytes each).
PROFILE_CACHE_CHARS = 2_000_000


def normalise(text: str) -> str:
    """Lowercase, single-spaced, without a leading community tag."""
    return " ".join(_TAG.sub("", text[:MAX_SCORED_CHARS], count=1).lower().split())


@dataclass(frozen=True, slots=True)
class Counts:
    """A text's counts of words or of trigrams: the counts, their keys as a set, whether
    every count is 1 (most trigrams of a short text are there once), and their Euclidean
    norm. The dot product of two counts is over the keys they share, found by a set
    intersection in C; when both are all ones, it is how many keys they share."""

    counts: Mapping[str, int]
    keys: frozenset[str]
    ones: bool
    norm: float

    @classmethod
    def of(cls, items: list[str]) -> Counts:
        counts = Counter(items)
        return cls(counts, frozenset(counts), len(counts) == len(items), _norm(counts))

    def cosine(self, other: Counts) -> float:
        if not self.norm or not other.norm:
            return 0.0
        shared = self.keys & other.keys
        if self.ones and other.ones:
            dot = len(shared)
        else:
            a, b = self.counts, other.counts
            dot = sum([a[key] * b[key] for key in shared])
        return dot / (self.norm * other.norm)


@dataclass(frozen=True, slots=True)
class Profile:
    """A normalised text's word and trigram counts."""

    text: str
    words: Counts
    grams: Counts

    @classmethod
    def of(cls, normalised: str) -> Profile:
        words = Counts.of(_WORD.findall(normalised))
        grams = Counts.of(_TRIGRAM.findall(f"  {normalised} "))
        return cls(normalised, words, grams)

    def similarity(self, other: Profile) -> float:
        """The mean of the two cosines, in [0, 1]; 1.0 for the same text."""
        if not self.text or not other.text:
            return 0.0
        if self.text == other.text:
            return 1.0
        words = self.words.cosine(other.words)
        grams = self.grams.cosine(other.grams)
        return min(1.0, max(0.0, (words + grams) / 2))


def _norm(counts: Counter[str]) -> float:
    return math.hypot(*counts.values())


class Profiles:
    """The profiles of texts and memories seen lately, least recently used out first,
    bounded by the characters they hold: the same claims and results are candidates search
    after search, and a memory's content is its key, so no stale profile is ever used.
    The hub ranks on its event loop's thread alone, so the cache takes no lock."""

    def __init__(self, max_chars: int = PROFILE_CACHE_CHARS) -> None:
        self.max_chars = max_chars
        self._held: OrderedDict[tuple[str, ...], tuple[Profile, ...]] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._held)

    def text(self, text: str) -> Profile:
        """The profile of ``text`` (raw, not yet normalised)."""
        text = text[:MAX_SCORED_CHARS]
        return self._get((text,), lambda: (Profile.of(normalise(text)),))[0]

    def memory(self, memory: Memory) -> tuple[Profile, ...]:
        """The profiles of a memory's :func:`sources`, each distinct text once."""
        key = (memory.description, memory.value, "b" if memory.is_base64 else "")
        return self._get(key, lambda: _distinct(self.text(s) for s in sources(memory)))

    def _get(
        self, key: tuple[str, ...], make: Callable[[], tuple[Profile, ...]]
    ) -> tuple[Profile, ...]:
        found = self._held.get(key)
        if found is not None:
            self._held.move_to_end(key)
            return found
        made = make()
        self._held[key] = made
        self._chars += sum(map(len, key))
        while self._chars > self.max_chars and self._held:
            old, _ = self._held.popitem(last=False)
            self._chars -= sum(map(len, old))
        return made


def _distinct(profiles: Iterable[Profile]) -> tuple[Profile, ...]:
    return tuple({profile.text: profile for profile in profiles}.values())


_PROFILES = Profiles()


def similarity(query: str, text: str) -> float:
    """How alike ``query`` and ``text`` are, in [0, 1]; 1.0 for the same normalised text."""
    return _PROFILES.text(query).similarity(_PROFILES.text(text))


def sources(memory: Memory) -> list[str]:
    """What a memory is scored on: its description and its text or, when the text is a
    JSON object, the object's prose fields (strings with a space, up to ``MAX_FIELD``)."""
    text = memory.text or ""
    found = [memory.description]
    record = None
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
    if isinstance(record, dict):
        found += [
            value
            for value in record.values()
            if isinstance(value, str) and len(value) <= MAX_FIELD and " " in value.strip()
        ]
    else:
        found.append(text)
    return found


def score(query: str, memory: Memory) -> float:
    """A memory's score for ``query``: the best of its :func:`sources`."""
    return _best(_PROFILES.text(query), memory)


def _best(query: Profile, memory: Memory) -> float:
    return max(query.similarity(profile) for profile in _PROFILES.memory(memory))


def candidates(limit: int, most: int) -> int:
    """How many candidates to ask a store for, to return ``limit`` hits."""
    return min(most, max(MIN_CANDIDATES, limit * CANDIDATES_PER_HIT))


def rank(query: str, found: Sequence[Hit], limit: int) -> list[Hit]:
    """The candidates re-scored by :func:`similarity`, best first, ties by key; ``limit``."""
    profile = _PROFILES.text(query)
    scored = [Hit(hit.memory, round(_best(profile, hit.memory), 6)) for hit in found]
    scored.sort(key=lambda hit: (-hit.score, hit.memory.key_name))
    return scored[:limit]
