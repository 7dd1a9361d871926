"""The hub's HTTP side: a Starlette app with the JSON-RPC endpoint and the ``/auth`` routes.

:func:`build_app` wires a :class:`~autoresearchd.hub.store.HubStore` into routes:
``POST /`` (and ``/mcp``) for JSON-RPC, ``POST /auth/agent-register`` and
``GET /healthz``. Every JSON-RPC call needs ``Authorization: Bearer <key>``; bodies over
``max_body_bytes`` are refused before they are parsed, and each key is rate limited.
Errors are always JSON-RPC replies, never tracebacks: storage trouble is 503 so that
clients retry it. :func:`serve` runs the app under uvicorn; :func:`init_hub` creates the
org and the admin key and seeds ``best/``.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autoresearchd.config import UNSET_PATH, Config, HubConfig
from autoresearchd.errors import ConfigError, HubError
from autoresearchd.hub.auth import (
    AGENT_NAME,
    RateLimiter,
    hash_key,
    new_api_key,
    new_verification_code,
)
from autoresearchd.hub.rpc import (
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORISED,
    UNAVAILABLE,
    RpcFault,
    Tools,
    error_reply,
    parse_request,
    request_id_of,
    result_reply,
)
from autoresearchd.hub.store import Agent, HubStore, NewMemory, SqliteStore
from autoresearchd.models import sha256_text

log = structlog.get_logger(__name__)

ADMIN = "admin"
MAX_REGISTER_BYTES = 4096


def database_path(config: Config) -> Path:
    hub = config.hub
    return hub.database if hub.database != UNSET_PATH else config.daemon.state_dir / "hub.sqlite"


class Hub:
    """The request handlers, bound to one store and one ``[hub]`` config."""

    def __init__(self, store: HubStore, config: HubConfig, clock: Callable[[], float]) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.tools = Tools(store, max_value_bytes=config.max_value_bytes, clock=clock)
        self.limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)

    async def rpc(self, request: Request) -> Response:
        body = await _read_body(request, self.config.max_body_bytes)
        if body is None:
            fault = RpcFault(TOO_LARGE, f"body exceeds {self.config.max_body_bytes} bytes")
            return _reply(error_reply(None, fault), 413)
        try:
            return await self._rpc(request, body)
        except RpcFault as fault:
            status = {UNAUTHORISED: 401, RATE_LIMITED: 429, UNAVAILABLE: 503}.get(fault.rpc_code)
            headers = _retry_after(fault)
            return _reply(error_reply(request_id_of(body), fault), status or 200, headers)
        except HubError as exc:
            log.error("hub_storage_failed", error=str(exc))
            unavailable = RpcFault(UNAVAILABLE, "storage unavailable, retry later")
            return _reply(error_reply(request_id_of(body), unavailable), 503)

    async def _rpc(self, request: Request, body: bytes) -> Response:
        agent, key_hash = await self._authenticate(request)
        wait = self.limiter.retry_after(key_hash)
        if wait > 0:
            raise RpcFault(RATE_LIMITED, "rate limited", {"retry_after": math.ceil(wait)})
        call = parse_request(body)
        payload = await self.tools.call(agent, call)
        return _reply(result_reply(call.request_id, payload))

    async def _authenticate(self, request: Request) -> tuple[Agent, str]:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RpcFault(UNAUTHORISED, "missing Authorization: Bearer <key>")
        key_hash = hash_key(token.strip())
        agent = await self.store.agent_for(key_hash)
        if agent is None:
            raise RpcFault(UNAUTHORISED, "unknown API key")
        return agent, key_hash

    async def register(self, request: Request) -> Response:
        body = await _read_body(request, MAX_REGISTER_BYTES)
        name = _name_from(body)
        if name is None:
            return JSONResponse({"error": 'expected {"name": <1-64 of A-Z a-z 0-9 _ . ->}'}, 400)
        api_key, code = new_api_key(), new_verification_code()
        if not await self.store.register(Agent(name), hash_key(api_key), code, self.clock()):
            return JSONResponse({"error": f"the name {name} is taken"}, 409)
        base = self.config.public_url or str(request.base_url).rstrip("/")
        log.info("agent_registered", agent=name)
        claim_url = f"{base}/auth/claim?agent={name}&code={code}"
        return JSONResponse({"api_key": api_key, "claim_url": claim_url, "verification_code": code})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (without reading all of it)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _name_from(body: bytes | None) -> str | None:
    try:
        message = json.loads(body) if body is not None else None
    except (ValueError, UnicodeDecodeError):
        return None
    name = message.get("name") if isinstance(message, dict) else None
    return name if isinstance(name, str) and AGENT_NAME.match(name) else None


def _retry_after(fault: RpcFault) -> dict[str, str]:
    wait = fault.data.get("retry_after")
    return {"Retry-After": str(wait)} if wait is not None else {}


def _reply(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(payload, status_code=status, headers=headers)


def build_app(
    store: HubStore, config: HubConfig, *, clock: Callable[[], float] = time.time
) -> Starlette:
    """The hub as an ASGI app over an opened ``store``."""
    hub = Hub(store, config, clock)
    routes = [
        Route("/", hub.rpc, methods=["POST"]),
        Route("/mcp", hub.rpc, methods=["POST"]),
        Route("/auth/agent-register", hub.register, methods=["POST"]),
        Route("/healthz", hub.health, methods=["GET"]),
    ]
    return Starlette(routes=routes)


async def serve(config: Config) -> None:
    """Run the hub under uvicorn until cancelled or signalled."""
    import uvicorn  # the server is needed only here, not by tests that drive the app

    store = SqliteStore(database_path(config))
    app = build_app(store, config.hub)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.hub.listen_host,
            port=config.hub.listen_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    log.info("hub_serving", host=config.hub.listen_host, port=config.hub.listen_port)
    try:
        await server.serve()
    finally:
        await store.close()


async def init_hub(config: Config, baseline: Path | None) -> str:
    """Create the org and the admin agent, seed ``best/``; return the admin API key."""
    org = config.hub.org
    if not org:
        raise ConfigError("expected an organisation name", path=str(config.source), key="hub.org")
    store = SqliteStore(database_path(config))
    try:
        return await _init(store, org, baseline, time.time())
    finally:
        await store.close()


async def _init(store: HubStore, org: str, baseline: Path | None, now: float) -> str:
    source = _read_baseline(baseline) if baseline is not None else None
    await store.create_org(org, now)
    api_key = new_api_key()
    admin = Agent(ADMIN, is_admin=True, verified=True)
    if not await store.register(admin, hash_key(api_key), new_verification_code(), now):
        raise HubError(f"this hub already has an {ADMIN} agent; it was initialised before")
    if source is not None:
        await _seed_best(store, org, source, now)
    log.info("hub_initialised", org=org, seeded=source is not None)
    return api_key


def _read_baseline(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the baseline: {exc}", path=str(path)) from None


async def _seed_best(store: HubStore, org: str, source: str, now: float) -> None:
    sha = sha256_text(source)
    metadata = {
        "val_bpb": None,
        "train_py_sha256": sha,
        "agent_id": ADMIN,
        "description": "baseline",
        "result_id": "",
        "updated_at": now,
    }
    for rest, text in (("best/metadata", json.dumps(metadata)), ("best/train_py", source)):
        value = base64.b64encode(text.encode("utf-8")).decode("ascii")
        await store.create(ADMIN, NewMemory(f"@{org}/{rest}", value, True, rest), now)
