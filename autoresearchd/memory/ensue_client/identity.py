"""Who we are to a hub: registration, ``whoami``, invites, and the API key file.

Registration and ``whoami`` are plain HTTP beside the JSON-RPC endpoint (``/auth/<route>``);
joining an org by invite is the ``claim_invite`` tool. The key file holds one API key and
must be readable by its owner alone.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from autoresearchd.errors import ConfigError, MemoryBackendError, TransientMemoryError
from autoresearchd.fsutil import write_atomically
from autoresearchd.memory.ensue_client.rpc import (
    BACKEND,
    DEFAULT_TIMEOUT_S,
    EnsueRpc,
    json_object,
)


@dataclass(frozen=True, slots=True)
class Registration:
    """A hub's answer to a registration. ``claim_url`` is set only by hubs that send no mail."""

    agent: str
    api_key: str = field(repr=False)
    message: str = ""
    claim_url: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key belongs to, as the hub sees it."""

    agent: str
    verified: bool
    admin: bool = False


def auth_url(url: str, route: str) -> str:
    """``/auth/<route>`` beside the JSON-RPC endpoint ``url`` (which may end in ``/mcp``)."""
    parts = urlsplit(url)
    base = parts.path.rsplit("/", 1)[0] if not parts.path.endswith("/") else parts.path[:-1]
    if base.endswith("/mcp"):
        base = base[: -len("/mcp")]
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/auth/{route}", "", ""))


async def register_agent(
    url: str,
    name: str,
    email: str | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Registration:
    """Register ``name`` at the hub behind ``url``; the hub mails ``email`` a link."""
    body: dict[str, str] = {"name": name} | ({"email": email} if email else {})
    register_url = auth_url(url, "agent-register")
    reply = await _auth_call("POST", register_url, body, None, transport, timeout_s)
    api_key = reply.get("api_key")
    if not isinstance(api_key, str) or not api_key:
        raise MemoryBackendError("the registration reply carries no api_key", backend=BACKEND)
    claim_url = reply.get("claim_url")
    return Registration(
        agent=name,
        api_key=api_key,
        message=str(reply.get("message", "")),
        claim_url=claim_url if isinstance(claim_url, str) else "",
    )


async def whoami(
    url: str,
    api_key: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Identity:
    """The agent ``api_key`` belongs to and whether it is verified."""
    reply = await _auth_call("GET", auth_url(url, "whoami"), None, api_key, transport, timeout_s)
    return Identity(
        agent=str(reply.get("agent", "")),
        verified=reply.get("verified") is True,
        admin=reply.get("admin") is True,
    )


async def claim_invite(
    url: str,
    api_key: str,
    token: str,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Join the org whose invite ``token`` is (the ``claim_invite`` tool); its answer."""
    rpc = EnsueRpc(url, api_key, transport=transport, timeout_s=timeout_s)
    await rpc.open()
    try:
        reply = await rpc.call("claim_invite", {"token": token}, key="claim_invite")
    finally:
        await rpc.close()
    return reply.payload


async def _auth_call(
    method: str,
    url: str,
    body: dict[str, str] | None,
    api_key: str | None,
    transport: httpx.AsyncBaseTransport | None,
    timeout_s: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(transport=transport, timeout=timeout_s) as client:
        try:
            response = await client.request(method, url, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientMemoryError(
                f"cannot reach {url}: {type(exc).__name__}", backend=BACKEND
            ) from None
    reply = json_object(response.text)
    if response.status_code != 200:
        reason = str(reply.get("error") or response.reason_phrase)
        raise MemoryBackendError(
            f"{url} answered {response.status_code}: {reason}", backend=BACKEND
        )
    return reply


def write_api_key(path: Path, api_key: str, *, force: bool = False) -> None:
    """Store ``api_key`` in ``path`` with mode 0600; an existing file only with ``force``."""
    check_key_file(path, force=force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Without force, linking fails if the file appeared meanwhile.
        write_atomically(path, (api_key + "\n").encode(), mode=0o600, replace=force)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the API key: {exc.strerror or exc}",
            path=str(path),
            key="memory.api_key_file",
        ) from None


def check_key_file(path: Path, *, force: bool) -> None:
    """Refuse to overwrite an existing key file unless ``force``: its key would be lost."""
    if path.exists() and not force:
        raise ConfigError(
            "an API key file exists already; pass --force to replace it",
            path=str(path),
            key="memory.api_key_file",
        )


def read_api_key(path: Path) -> str:
    """The API key in ``path``, which must be a file only its owner can read or write."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"mode {stat.S_IMODE(mode):04o} is too open; run chmod 600 on it",
                path=str(path),
                key="memory.api_key_file",
            )
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the API key: {exc.strerror or exc}",
            path=str(path),
            key="memory.api_key_file",
        ) from None
    if not key:
        raise ConfigError("the API key file is empty", path=str(path), key="memory.api_key_file")
    return key
