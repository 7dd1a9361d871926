"""Checks of a tool's arguments: each bad one is an invalid-params fault naming it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoresearchd.ensue.errors import INVALID_PARAMS
from autoresearchd.ensue.keys import split_key
from autoresearchd.hub.jsonrpc import RpcFault

MAX_KEY_CHARS = 512
DEFAULT_LIMIT = 100


def invalid(message: str) -> RpcFault:
    """The fault for a bad argument, ``message`` saying which and why."""
    return RpcFault(INVALID_PARAMS, f"invalid params: {message}")


def arg(args: Mapping[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    """``args[name]``, checked to be a ``kind`` (a bool is no int); required unless a
    ``default`` is given."""
    if name not in args:
        if default is ...:
            raise invalid(f"{name} is required")
        return default
    value = args[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(f"{name} must be a {kind.__name__}")
    return value


def limit(args: Mapping[str, Any], most: int) -> int:
    """The ``limit`` argument, from 1 to ``most`` (:data:`DEFAULT_LIMIT` when absent)."""
    value = arg(args, "limit", int, DEFAULT_LIMIT)
    if not 1 <= value <= most:
        raise invalid(f"limit must be between 1 and {most}")
    return int(value)


def key_name(value: Any) -> str:
    """``value`` checked to be a full key name (``@org/path``) a store may hold."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_CHARS:
        raise invalid(f"key_name must be a string of 1 to {MAX_KEY_CHARS} characters")
    # Every whitespace character but the ASCII space is unprintable, so this is "no
    # whitespace, nothing unprintable" in two passes in C instead of one per character.
    if not value.isprintable() or " " in value or split_key(value) is None:
        raise invalid(f"key_name {value[:80]!r} must look like @org/path, without spaces")
    return value
