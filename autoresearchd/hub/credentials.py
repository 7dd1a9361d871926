"""The hub's credentials: API keys, verification codes, and the names and emails agents give.

API keys are random 256-bit tokens and verification codes random 128-bit ones; the hub
stores only their sha256 (:func:`hash_key`), so a leaked database leaks neither.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "ard_"
#: Matched whole (``fullmatch``): ``$`` would let ``"admin\n"`` pass as a name.
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
EMAIL = re.compile(r"[^@\s<>\"',;]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")


def is_agent_name(name: object) -> bool:
    """Whether ``name`` is a whole agent name: 1-64 of ``A-Z a-z 0-9 _ . -``, no newline."""
    return isinstance(name, str) and AGENT_NAME.fullmatch(name) is not None


def is_email(email: object) -> bool:
    """Whether ``email`` looks like one address, with no control or invisible characters."""
    return isinstance(email, str) and email.isprintable() and EMAIL.fullmatch(email) is not None


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def new_verification_code() -> str:
    return secrets.token_urlsafe(16)
