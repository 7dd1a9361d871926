"""A sparse, hierarchical order-k Markov source over bytes whose entropy rate is exact.

The synthetic track is drawn from this source. Each context of ``k`` symbols allows a
few successors, chosen as a subset of the successors allowed by its shorter suffix, so
a model meets graded structure: unigram, then bigram, ..., then the full order-k table.
Every full context assigns the same probability vector ``probs`` to its successors
(only the order is permuted), so the entropy rate is exactly ``H(probs)`` whatever the
stationary distribution is: that is the floor of val_bpb. Generation is pure Python,
deterministic for a given spec, and needs no network.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MarkovSpec:
    """The parameters that fully determine a source (and so its data)."""

    alphabet: bytes
    fanouts: tuple[int, ...]  # successors allowed by a context of 1..k symbols
    probs: tuple[float, ...]  # probabilities over a full context's successors
    seed: int

    @property
    def order(self) -> int:
        return len(self.fanouts)

    def validate(self) -> None:
        """Raise ValueError when the spec cannot describe a source."""
        sizes = (len(self.alphabet), *self.fanouts)
        if len(set(self.alphabet)) != len(self.alphabet) or not self.fanouts:
            raise ValueError("alphabet must be distinct bytes and fanouts non-empty")
        if any(a < b for a, b in itertools.pairwise(sizes)) or self.fanouts[-1] != len(self.probs):
            raise ValueError("fanouts must shrink and end at len(probs)")
        if not math.isclose(sum(self.probs), 1.0) or min(self.probs) <= 0:
            raise ValueError("probs must be positive and sum to 1")


def entropy_bits(probs: tuple[float, ...]) -> float:
    """Shannon entropy of a distribution, in bits."""
    return -sum(p * math.log2(p) for p in probs if p > 0)


class MarkovSource:
    """The transition table of a :class:`MarkovSpec`, and sampling from it."""

    def __init__(self, spec: MarkovSpec) -> None:
        spec.validate()
        self.spec = spec
        self.size = len(spec.alphabet)
        self.order = spec.order
        # successors[c] lists symbol indices allowed after full context index c, most likely first.
        self.successors = _build_table(spec, random.Random(spec.seed))

    @property
    def entropy_rate_bits(self) -> float:
        """The exact entropy rate: every full context uses a permutation of ``probs``."""
        return entropy_bits(self.spec.probs)

    def context_index(self, symbols: tuple[int, ...]) -> int:
        """Index of the full context made of the last ``order`` symbol indices, oldest first."""
        index = 0
        for symbol in symbols:
            index = index * self.size + symbol
        return index

    def generate(self, n: int, *, seed: int) -> bytes:
        """``n`` bytes of the chain, deterministic for ``(spec, seed)``."""
        rng = random.Random(seed)
        picks = rng.choices(range(len(self.spec.probs)), weights=self.spec.probs, k=n)
        start = self.context_index(tuple(rng.randrange(self.size) for _ in range(self.order)))
        return self._walk(picks, start)

    def _walk(self, picks: list[int], start: int) -> bytes:
        """The chain driven by pre-drawn successor ranks.

        States are full contexts pre-multiplied by the fan-out, so the hot loop is one
        list lookup per byte; a second C-level pass maps states to their last byte.
        """
        size, width = self.size, len(self.spec.probs)
        modulus = size ** (self.order - 1)
        step = [
            ((context % modulus) * size + symbol) * width
            for context, successors in enumerate(self.successors)
            for symbol in successors
        ]
        last_byte = [self.spec.alphabet[(state // width) % size] for state in range(len(step))]
        states: list[int] = []
        append = states.append
        state = start * width
        for pick in picks:
            state = step[state + pick]
            append(state)
        return bytes(map(last_byte.__getitem__, states))


def _build_table(spec: MarkovSpec, rng: random.Random) -> list[list[int]]:
    """Successor lists per full context; each level refines its shorter suffix's set."""
    size = len(spec.alphabet)
    allowed: dict[tuple[int, ...], list[int]] = {(): list(range(size))}
    for level, fanout in enumerate(spec.fanouts, start=1):
        level_allowed = {}
        for context in itertools.product(range(size), repeat=level):
            parent = allowed[context[1:]]
            level_allowed[context] = rng.sample(parent, fanout)
        allowed = level_allowed | {(): allowed[()]} if level < spec.order else level_allowed
    return [allowed[c] for c in itertools.product(range(size), repeat=spec.order)]
