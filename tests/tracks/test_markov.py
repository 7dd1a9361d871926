"""The synthetic source: deterministic, graded, and with the entropy rate it claims."""

from __future__ import annotations

import collections
import itertools
import math

import pytest

from autoresearchd.tracks.markov import MarkovSource, MarkovSpec, entropy_bits

SPEC = MarkovSpec(alphabet=b"abcdefghij", fanouts=(6, 3), probs=(0.5, 0.25, 0.25), seed=7)


def test_same_spec_and_seed_give_the_same_bytes() -> None:
    assert MarkovSource(SPEC).generate(5000, seed=1) == MarkovSource(SPEC).generate(5000, seed=1)


def test_another_seed_or_spec_gives_other_bytes() -> None:
    base = MarkovSource(SPEC).generate(2000, seed=1)
    assert MarkovSource(SPEC).generate(2000, seed=2) != base
    other = MarkovSpec(SPEC.alphabet, SPEC.fanouts, SPEC.probs, seed=8)
    assert MarkovSource(other).generate(2000, seed=1) != base


def test_output_uses_only_the_alphabet() -> None:
    assert set(MarkovSource(SPEC).generate(5000, seed=3)) <= set(SPEC.alphabet)


def test_each_context_refines_the_successors_of_its_suffix() -> None:
    source = MarkovSource(SPEC)
    size = len(SPEC.alphabet)
    data = source.generate(20000, seed=4)
    after_one: dict[int, set[int]] = collections.defaultdict(set)
    after_two: dict[tuple[int, int], set[int]] = collections.defaultdict(set)
    for a, b, c in zip(data, data[1:], data[2:], strict=False):
        after_one[b].add(c)
        after_two[(a, b)].add(c)
    assert max(len(s) for s in after_two.values()) == 3
    assert max(len(s) for s in after_one.values()) <= 6
    assert all(after_two[(a, b)] <= after_one[b] for a, b in after_two)
    assert len(source.successors) == size**2


def test_entropy_rate_is_that_of_probs_and_matches_the_data() -> None:
    source = MarkovSource(SPEC)
    assert source.entropy_rate_bits == pytest.approx(1.5)
    data = source.generate(100_000, seed=5)
    pairs = collections.Counter(zip(data, data[1:], data[2:], strict=False))
    contexts = collections.Counter(itertools.pairwise(data))
    total = sum(pairs.values())
    empirical = -sum(n * math.log2(n / contexts[(a, b)]) for (a, b, _), n in pairs.items()) / total
    assert empirical == pytest.approx(1.5, abs=0.03)


def test_entropy_bits_of_known_distributions() -> None:
    assert entropy_bits((0.25,) * 4) == 2.0
    assert entropy_bits((0.5, 0.25, 0.125, 0.125)) == 1.75


@pytest.mark.parametrize(
    "spec",
    [
        MarkovSpec(b"aab", (2,), (0.5, 0.5), 0),  # repeated symbol
        MarkovSpec(b"abc", (4,), (0.25,) * 4, 0),  # fan-out larger than the alphabet
        MarkovSpec(b"abc", (2,), (0.5, 0.25), 0),  # probabilities do not sum to 1
        MarkovSpec(b"abcd", (2, 3), (0.5, 0.25, 0.25), 0),  # fan-outs grow
    ],
)
def test_invalid_specs_are_rejected(spec: MarkovSpec) -> None:
    with pytest.raises(ValueError):
        MarkovSource(spec)
