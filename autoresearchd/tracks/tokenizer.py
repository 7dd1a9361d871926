"""The byte-level tokenizer: one token per byte, 256 symbols, no merges.

Because a token is exactly one byte, the mean cross-entropy per token in bits *is* the
bits per byte, with no tokenizer-dependent conversion to argue about.
"""

from __future__ import annotations

VOCAB_SIZE = 256


def encode(text: str) -> bytes:
    """Tokens of ``text``: its UTF-8 bytes."""
    return text.encode("utf-8")


def decode(tokens: bytes | bytearray | list[int]) -> str:
    """Text of ``tokens``; bytes that are not valid UTF-8 become U+FFFD."""
    return bytes(tokens).decode("utf-8", errors="replace")
