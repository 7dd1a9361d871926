"""Training and validation tokens on the device, and the training-batch sampler (torch).

A prepared split is small (bytes, one token each), so it is loaded whole onto the
training device; sampling a batch is then one gather, with no host-to-device copies in
the training loop. Batches are random windows of ``seq_len + 1`` tokens drawn with a
seeded generator, so a run is reproducible from ``AUTORESEARCH_SEED``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoresearchd.tracks.prepare import PreparedTrack


@dataclass(frozen=True, slots=True)
class TrackData:
    """A prepared track's tokens, resident on one device as uint8 tensors."""

    prepared: PreparedTrack
    train: torch.Tensor
    val: torch.Tensor


def load_tokens(data: bytes, device: torch.device) -> torch.Tensor:
    """A uint8 token tensor on ``device`` from raw bytes."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def load_track(prepared: PreparedTrack, device: torch.device) -> TrackData:
    """Both splits of ``prepared`` on ``device``."""
    return TrackData(
        prepared=prepared,
        train=load_tokens(prepared.train_file.read_bytes(), device),
        val=load_tokens(prepared.val_file.read_bytes(), device),
    )


class BatchSampler:
    """Random training windows: ``(inputs, targets)`` of shape ``(batch, seq_len)``, int64."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch: int, seed: int) -> None:
        if tokens.numel() < seq_len + 2:
            raise ValueError(f"{tokens.numel()} tokens cannot fill a window of {seq_len + 1}")
        self.tokens = tokens
        self.batch = batch
        self.offsets = torch.arange(seq_len + 1, device=tokens.device)
        self.generator = torch.Generator(device=tokens.device)
        self.generator.manual_seed(seed)
        self.high = tokens.numel() - seq_len - 1

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of windows."""
        starts = torch.randint(
            0, self.high + 1, (self.batch, 1), device=self.tokens.device, generator=self.generator
        )
        windows = self.tokens[starts + self.offsets].long()
        return windows[:, :-1], windows[:, 1:]
