"""The training-batch sampler: seeded, shifted targets, windows inside the split."""

from __future__ import annotations

import pytest
import torch

from autoresearchd.harness.data import BatchSampler, load_track
from autoresearchd.tracks.prepare import PreparedTrack


def test_targets_are_inputs_shifted_by_one() -> None:
    tokens = torch.arange(200, dtype=torch.uint8)
    inputs, targets = BatchSampler(tokens, seq_len=16, batch=8, seed=0).next()
    assert inputs.shape == targets.shape == (8, 16)
    assert inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(targets - inputs, torch.ones_like(inputs))


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    tokens = torch.randint(0, 256, (10_000,), dtype=torch.uint8)
    a, b, c = (BatchSampler(tokens, 32, 4, seed) for seed in (1, 1, 2))
    assert torch.equal(a.next()[0], b.next()[0])
    assert not torch.equal(a.next()[0], c.next()[0])


def test_windows_reach_the_last_token_and_never_past_it() -> None:
    tokens = torch.arange(20, dtype=torch.uint8)
    sampler = BatchSampler(tokens, seq_len=16, batch=256, seed=0)
    _, targets = sampler.next()
    assert targets.max().item() == 19


def test_too_short_split_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot fill"):
        BatchSampler(torch.zeros(10, dtype=torch.uint8), seq_len=16, batch=1, seed=0)


def test_load_track_reads_both_splits(synthetic: PreparedTrack) -> None:
    data = load_track(synthetic, torch.device("cpu"))
    assert data.train.numel() == synthetic.train_tokens
    assert bytes(data.val[:64].tolist()) == synthetic.val_file.read_bytes()[:64]
