"""The value codec: Ensue values are text, sent as base64 (``"base64": true``) or plain.

Writers send base64 so that any text survives every transport; readers get values
decoded where the server can (our hub decodes every text value it returns), and
:func:`decode` reads either form.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def encode(text: str) -> str:
    """``text`` as base64 of its UTF-8 bytes."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode_bytes(value: str) -> bytes | None:
    """The bytes a strict base64 ``value`` holds; None when it is not valid base64."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
        return None


def decode(value: Any, is_base64: Any) -> str | None:
    """A value as read: its text, or None when it is binary or malformed base64.

    A non-text JSON value (a server may send one) reads as its JSON text.
    """
    if not isinstance(value, str):
        return None if value is None else json.dumps(value)
    if not is_base64:
        return value
    raw = decode_bytes(value)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def size_of(value: str, is_base64: bool) -> int | None:
    """The stored size of a value in bytes; None when a base64 value is malformed."""
    if not is_base64:
        return len(value.encode("utf-8"))
    raw = decode_bytes(value)
    return None if raw is None else len(raw)
