"""``evaluate_bpb``: the one metric every run reports, computed the same way for all (torch).

The first ``eval_tokens + 1`` validation tokens are cut into consecutive windows of
``seq_len + 1``; every window predicts its last ``seq_len`` tokens from the ones before
them, so exactly ``eval_tokens`` predictions are scored, whatever the batch size. With
one byte per token, the mean cross-entropy in bits is the bits per byte. The model is
any callable mapping int64 token ids ``(batch, seq_len)`` to logits
``(batch, seq_len, 256)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from autoresearchd.tracks.tokenizer import VOCAB_SIZE

Model = Callable[[torch.Tensor], torch.Tensor]


def evaluate_bpb(
    model: Model, val: torch.Tensor, *, seq_len: int, eval_tokens: int, batch_size: int
) -> float:
    """Bits per byte of ``model`` on the pinned validation windows of ``val``."""
    windows = _windows(val, seq_len, eval_tokens)
    total_nats = torch.zeros((), dtype=torch.float64, device=val.device)
    with torch.no_grad():
        for start in range(0, windows.size(0), batch_size):
            chunk = windows[start : start + batch_size].long()
            logits = _at_least_float32(model(chunk[:, :-1]))
            nats = F.cross_entropy(
                logits.reshape(-1, VOCAB_SIZE), chunk[:, 1:].reshape(-1), reduction="none"
            )
            total_nats += nats.double().sum()
    return float(total_nats.item()) / (math.log(2) * eval_tokens)


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """bf16 logits lose the digits that separate close runs; float64 ones are kept."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _windows(val: torch.Tensor, seq_len: int, eval_tokens: int) -> torch.Tensor:
    if eval_tokens <= 0 or eval_tokens % seq_len:
        raise ValueError(f"eval_tokens {eval_tokens} must be a positive multiple of {seq_len}")
    if val.numel() < eval_tokens + 1:
        raise ValueError(f"validation split has {val.numel()} tokens, needs {eval_tokens + 1}")
    count = eval_tokens // seq_len
    # Consecutive windows share their boundary token: it is the last target of one and
    # the first input of the next, so every one of eval_tokens targets is scored once.
    starts = torch.arange(count, device=val.device) * seq_len
    return val[starts[:, None] + torch.arange(seq_len + 1, device=val.device)]
