"""``evaluate_bpb`` scores exactly the pinned tokens: an oracle gets the source's entropy."""

from __future__ import annotations

import math

import pytest
import torch

from autoresearchd.harness.evaluation import evaluate_bpb
from autoresearchd.tracks.markov import MarkovSource, MarkovSpec
from autoresearchd.tracks.tokenizer import VOCAB_SIZE

SEQ_LEN = 32
EVAL_TOKENS = 2**14


def _oracle(source: MarkovSource) -> torch.Tensor:
    """Log-probabilities of the next byte given the previous one, for an order-1 source."""
    alphabet = source.spec.alphabet
    table = torch.full((VOCAB_SIZE, VOCAB_SIZE), -math.log(VOCAB_SIZE), dtype=torch.float64)
    for context, successors in enumerate(source.successors):
        row = torch.full((VOCAB_SIZE,), -math.inf, dtype=torch.float64)
        for symbol, p in zip(successors, source.spec.probs, strict=True):
            row[alphabet[symbol]] = math.log(p)
        table[alphabet[context]] = row
    return table


def _val(source: MarkovSource) -> torch.Tensor:
    data = source.generate(EVAL_TOKENS + 1, seed=11)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _bpb(table: torch.Tensor, val: torch.Tensor, batch_size: int = 64) -> float:
    return evaluate_bpb(
        lambda x: table[x], val, seq_len=SEQ_LEN, eval_tokens=EVAL_TOKENS, batch_size=batch_size
    )


def test_oracle_on_a_uniform_source_scores_exactly_its_entropy() -> None:
    """Every transition has probability 1/4, so every prediction costs exactly 2 bits."""
    source = MarkovSource(MarkovSpec(b"abcdefgh", (4,), (0.25,) * 4, seed=3))
    assert _bpb(_oracle(source), _val(source)) == pytest.approx(2.0, abs=1e-12)


def test_oracle_scores_the_exact_mean_surprise_of_the_pinned_tokens() -> None:
    source = MarkovSource(MarkovSpec(b"abcdefgh", (4,), (0.5, 0.25, 0.125, 0.125), seed=3))
    val = _val(source)
    table = _oracle(source)
    pairs = list(zip(val[:-1].tolist(), val[1:].tolist(), strict=True))
    expected = -sum(table[a, b].item() for a, b in pairs) / (math.log(2) * EVAL_TOKENS)
    bpb = _bpb(table, val)
    assert bpb == pytest.approx(expected, abs=1e-12)
    assert bpb == pytest.approx(source.entropy_rate_bits, abs=0.03)


def test_a_model_that_knows_nothing_scores_eight_bits() -> None:
    val = torch.randint(0, VOCAB_SIZE, (EVAL_TOKENS + 1,), dtype=torch.uint8)
    flat = torch.zeros(VOCAB_SIZE, VOCAB_SIZE)
    assert _bpb(flat, val) == pytest.approx(8.0, abs=1e-6)


def test_batch_size_does_not_change_the_score() -> None:
    source = MarkovSource(MarkovSpec(b"abcdefgh", (4,), (0.5, 0.25, 0.125, 0.125), seed=3))
    val, table = _val(source), _oracle(source)
    assert _bpb(table, val, batch_size=7) == pytest.approx(_bpb(table, val, 512), abs=1e-12)


def test_only_the_first_eval_tokens_are_scored() -> None:
    source = MarkovSource(MarkovSpec(b"abcdefgh", (4,), (0.25,) * 4, seed=3))
    val = torch.cat([_val(source), torch.zeros(1000, dtype=torch.uint8)])  # a tail to ignore
    assert _bpb(_oracle(source), val) == pytest.approx(2.0, abs=1e-12)


def test_partial_windows_and_short_splits_are_refused() -> None:
    val = torch.zeros(EVAL_TOKENS + 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="multiple"):
        evaluate_bpb(lambda x: x, val, seq_len=SEQ_LEN, eval_tokens=SEQ_LEN + 1, batch_size=1)
    with pytest.raises(ValueError, match="needs"):
        evaluate_bpb(lambda x: x, val[:100], seq_len=SEQ_LEN, eval_tokens=128, batch_size=1)
