"""The hub's HTTP side: a Starlette app with the JSON-RPC endpoint and the ``/auth`` routes.

:func:`build_app` wires a :class:`~autoresearchd.hub.storage.protocol.HubStore` into routes:
``POST /`` (and ``/mcp``) for JSON-RPC, which also answers the MCP handshake without a
key (``initialize``, ``ping``, ``tools/list``: :mod:`~autoresearchd.hub.mcp`; any
notification gets 202); ``POST /auth/agent-register`` ``{"name", "email"}``, which
stores an unverified agent and emails it a verification link (with
``hub.name_only_registration``, a name alone registers an agent only an invite verifies);
``GET /auth/verify?agent=&code=`` (the link; ``/auth/claim`` too) and ``POST
/auth/verify`` ``{"name", "code"}``, which verify it; ``GET /auth/whoami`` (with a key)
and ``GET /healthz``; with ``hub.dashboard`` on, the read-only pages under ``/dashboard``
(:mod:`autoresearchd.dashboard`). With ``hub.require_email = false`` an email is optional and a
registration without one gets the link and code in its reply, as before email
verification existed. Every JSON-RPC tool call needs ``Authorization: Bearer <key>``,
except reads of what an org made public; a key that is sent is checked first; bodies
over ``max_body_bytes`` are refused before they are parsed. Requests are rate limited per
client IP (the ``/auth`` routes more tightly: :class:`~autoresearchd.hub.ratelimit.RateLimit`
wraps each route) and per key; a limited request gets 429 with ``Retry-After``. The limits
live in each hub process, so they apply per worker and per replica. Errors are JSON, never
tracebacks: storage or mail trouble is 503 so that clients retry it, while bodies go through
:mod:`~autoresearchd.hub.strictjson` (hostile JSON is a parse error or a 400) and a value a
store cannot hold is invalid params, not an outage to retry. Nothing a guarantee rests on
is kept in process memory: only the rate limits (per process, as above), a cache of orgs
seen to exist (orgs are never dropped) and the store's cache of keys, which every change
of an agent empties (:mod:`~autoresearchd.hub.keycache`). :mod:`~autoresearchd.hub.serve`
runs the app; :mod:`~autoresearchd.hub.admin` initialises, migrates and revokes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from autoresearchd.config import HubConfig
from autoresearchd.ensue import envelope
from autoresearchd.ensue.errors import (
    INVALID_PARAMS,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORISED,
    UNAVAILABLE,
)
from autoresearchd.errors import HubError
from autoresearchd.hub import batch, mcp, strictjson
from autoresearchd.hub.credentials import (
    hash_key,
    is_agent_name,
    is_email,
    new_api_key,
    new_verification_code,
)
from autoresearchd.hub.jsonrpc import (
    Message,
    RpcFault,
    error_reply,
    parse_message,
    request_id_of,
    result_reply,
    tool_call,
    tool_error_reply,
)
from autoresearchd.hub.mail import Mailer, verification_message
from autoresearchd.hub.policy import Rules
from autoresearchd.hub.ratelimit import RateLimit, RateLimiter, client_ip, too_many_requests
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.rows import Agent
from autoresearchd.hub.strictjson import JsonRefused
from autoresearchd.hub.tools import Tools

log = structlog.get_logger(__name__)

MAX_AUTH_BYTES = 4096
MAX_CODE_CHARS = 128


class Hub:
    """The request handlers, bound to one store, one ``[hub]`` config and a mailer."""

    def __init__(
        self,
        store: HubStore,
        config: HubConfig,
        clock: Callable[[], float],
        mailer: Mailer | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.mailer = mailer
        rules = Rules(
            config.replicates,
            config.replication,
            config.track,
            max_confirmations=config.max_confirmations,
            significance=config.significance,
        )
        self.tools = Tools(
            store,
            max_value_bytes=config.max_value_bytes,
            clock=clock,
            rules=rules,
            default_org=config.org,
        )
        self.tools.extend(batch.TOOL, batch.publish_result)
        self.limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
        self.ip_limiter = RateLimiter(config.rate_limit_ip_per_s, config.rate_limit_ip_burst)
        self.auth_limiter = RateLimiter(config.auth_rate_limit_per_s, config.auth_rate_limit_burst)

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
            if 400 <= exc.status < 500:  # the store refused the value itself
                refused = RpcFault(INVALID_PARAMS, f"invalid params: {exc}")
                return _reply(error_reply(request_id_of(body), refused))
            log.error("hub_storage_failed", error=str(exc))
            unavailable = RpcFault(UNAVAILABLE, "storage unavailable, retry later")
            return _reply(error_reply(request_id_of(body), unavailable), 503)

    async def _rpc(self, request: Request, body: bytes) -> Response:
        # A key that is sent is checked first: a bad key is 401 whatever the body says.
        agent, bucket = await self._authenticate(request, optional=True)
        message = parse_message(body)
        if message.notification:
            return Response(status_code=202)  # notifications/initialized, and any other
        if message.method in mcp.OPEN_METHODS:
            return _reply(envelope.result_reply(message.request_id, _open_method(message)))
        call = tool_call(message)
        wait = self.limiter.retry_after(bucket)
        if wait > 0:
            raise RpcFault(RATE_LIMITED, "rate limited", {"retry_after": math.ceil(wait)})
        try:
            payload = await self.tools.call(agent, call)
        except RpcFault as fault:
            if not fault.is_tool_error:
                raise
            return _reply(tool_error_reply(call.request_id, fault))
        return _reply(result_reply(call.request_id, payload))

    async def _authenticate(
        self, request: Request, *, optional: bool = False
    ) -> tuple[Agent | None, str]:
        """The agent a request's key belongs to and its rate-limit bucket; with
        ``optional``, a request without a key is anonymous (None), limited per IP."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header and optional:
            return None, f"ip:{client_ip(request.scope)}"
        if scheme.lower() != "bearer" or not token.strip():
            raise RpcFault(UNAUTHORISED, "missing Authorization: Bearer <key>")
        key_hash = hash_key(token.strip())
        agent = await self.store.agent_for(key_hash)
        if agent is None:
            raise RpcFault(UNAUTHORISED, "unknown API key")
        return agent, key_hash

    async def register(self, request: Request) -> Response:
        form = await _read_form(request)
        if isinstance(form, Response):
            return form
        name, email = form.get("name"), form.get("email")
        if not is_agent_name(name):
            return _error(400, 'expected {"name": <1-64 of A-Z a-z 0-9 _ . ->, "email": ...}')
        if email is not None and not is_email(email):
            return _error(400, "expected a valid email address, without control characters")
        if email is None and self.config.require_email:
            if self.config.name_only_registration:
                return await self._register_name_only(str(name))
            return _error(400, 'this hub needs an "email" to send a verification link to')
        return await self._register(request, str(name), str(email or ""))

    async def _register_name_only(self, name: str) -> Response:
        """An agent with a name alone, on a hub that verifies by email: it starts
        unverified, with no link to open, and is verified by claiming an invite."""
        api_key, now = new_api_key(), self.clock()
        # A code no one knows: the link route can never verify this agent.
        unknown_code = hash_key(new_verification_code())
        if not await self.store.register(Agent(name), hash_key(api_key), unknown_code, now):
            return _error(409, f"the name {name} is taken")
        log.info("agent_registered", agent=name, email=False, name_only=True)
        return JSONResponse(
            {
                "api_key": api_key,
                "agent": name,
                "verified": False,
                "message": "registered unverified; claim an invite (claim_invite) to be verified",
            }
        )

    async def _register(self, request: Request, name: str, email: str) -> Response:
        api_key, code = new_api_key(), new_verification_code()
        key_hash, now = hash_key(api_key), self.clock()
        if not await self.store.register(Agent(name, email=email), key_hash, hash_key(code), now):
            return _error(409, f"the name {name} is taken")
        link = f"{self._base(request)}/auth/verify?agent={quote(name)}&code={code}"
        log.info("agent_registered", agent=name, email=bool(email))
        if not email or self.mailer is None:
            return JSONResponse({"api_key": api_key, "claim_url": link, "verification_code": code})
        try:
            await self.mailer.send(email, *verification_message(name, link, code))
        except HubError as exc:
            await self.store.forget(name, key_hash, now)
            log.error("verification_mail_failed", agent=name, error=str(exc))
            return _error(503, "cannot send the verification email now; register again later")
        return JSONResponse(
            {
                "api_key": api_key,
                "agent": name,
                "verified": False,
                "message": f"a verification link was sent to {email}",
            }
        )

    def _base(self, request: Request) -> str:
        return self.config.public_url.rstrip("/") or str(request.base_url).rstrip("/")

    async def verify_link(self, request: Request) -> Response:
        name, code = request.query_params.get("agent", ""), request.query_params.get("code", "")
        if not await self._verify(name, code):
            return PlainTextResponse("This link is not valid: unknown agent or code.\n", 404)
        return PlainTextResponse(f"The agent {name} is verified. You may close this page.\n")

    async def verify_code(self, request: Request) -> Response:
        form = await _read_form(request)
        if isinstance(form, Response):
            return form
        name, code = form.get("name"), form.get("code")
        if not isinstance(name, str) or not isinstance(code, str):
            return _error(400, 'expected {"name": ..., "code": ...}')
        if not await self._verify(name, code):
            return _error(404, "unknown agent or code")
        return JSONResponse({"agent": name, "verified": True})

    async def _verify(self, name: str, code: str) -> bool:
        if not is_agent_name(name) or not code or len(code) > MAX_CODE_CHARS:
            return False
        verified = await self.store.verify(name, hash_key(code), self.clock())
        log.info("agent_verification", agent=name, verified=verified)
        return verified

    async def whoami(self, request: Request) -> Response:
        try:
            agent, key_hash = await self._authenticate(request)
        except RpcFault as fault:
            return _error(401, str(fault))
        assert agent is not None  # a key is required here
        wait = self.limiter.retry_after(key_hash)
        if wait > 0:
            return too_many_requests(math.ceil(wait))
        return JSONResponse(
            {"agent": agent.name, "verified": agent.verified, "admin": agent.is_admin}
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})


def _open_method(message: Message) -> dict[str, Any]:
    """The result of a method that needs no key: the MCP handshake and the tool list."""
    if message.method == "initialize":
        return mcp.initialize(message.params)
    if message.method == "tools/list":
        return mcp.tools_list()
    return {}  # ping


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


async def _read_form(request: Request) -> dict[str, Any] | Response:
    """The JSON object an ``/auth`` body holds, or the 4xx reply saying why there is none."""
    body = await _read_body(request, MAX_AUTH_BYTES)
    if body is None:
        return _error(413, f"the body exceeds {MAX_AUTH_BYTES} bytes")
    try:
        form = strictjson.loads(body)
    except JsonRefused as exc:
        return _error(400, f"the body was refused: {exc}")
    return form if isinstance(form, dict) else _error(400, "expected a JSON object")


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status)


def _retry_after(fault: RpcFault) -> dict[str, str]:
    wait = fault.data.get("retry_after")
    return {"Retry-After": str(wait)} if wait is not None else {}


def _reply(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(payload, status_code=status, headers=headers)


def build_app(
    store: HubStore,
    config: HubConfig,
    *,
    clock: Callable[[], float] = time.time,
    mailer: Mailer | None = None,
) -> Starlette:
    """The hub as an ASGI app over an opened ``store``; ``mailer`` sends verification mail."""
    hub = Hub(store, config, clock, mailer)
    per_ip = [Middleware(RateLimit, hub.ip_limiter)]
    auth = [Middleware(RateLimit, hub.ip_limiter, hub.auth_limiter)]
    routes = [
        Route("/", hub.rpc, methods=["POST"], middleware=per_ip),
        Route("/mcp", hub.rpc, methods=["POST"], middleware=per_ip),
        Route("/auth/agent-register", hub.register, methods=["POST"], middleware=auth),
        Route("/auth/verify", hub.verify_link, methods=["GET"], middleware=auth),
        Route("/auth/claim", hub.verify_link, methods=["GET"], middleware=auth),
        Route("/auth/verify", hub.verify_code, methods=["POST"], middleware=auth),
        Route("/auth/whoami", hub.whoami, methods=["GET"], middleware=per_ip),
        Route("/healthz", hub.health, methods=["GET"]),
    ]
    from autoresearchd.dashboard.mount import hub_routes  # jinja2 only where it is served

    return Starlette(routes=[*routes, *hub_routes(store, config)])
