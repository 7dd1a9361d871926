"""The hub's HTTP side: the JSON-RPC endpoint and a Starlette app with the ``/auth`` routes.

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
runs the app; :mod:`~autoresearchd.hub.admin` initialises, migrates and revokes. A JSON-RPC
POST, which every call is, goes straight to :class:`RpcEndpoint` (:class:`HubApp`), a plain
ASGI app, past Starlette's middleware, router and request and response objects.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

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

    async def answer(self, scope: Scope, receive: Receive) -> RpcReply | None:
        """The reply to one JSON-RPC POST (None when the client went away before its body
        arrived); the HTTP status says what a client should do (401, 413, 429, 503)."""
        body = await _receive_body(scope, receive, self.config.max_body_bytes)
        if body is Unread.GONE:
            return None
        if body is Unread.TOO_BIG:
            fault = RpcFault(TOO_LARGE, f"body exceeds {self.config.max_body_bytes} bytes")
            return RpcReply.json(error_reply(None, fault), 413)
        try:
            return await self._rpc(scope, body)
        except RpcFault as fault:
            status = {UNAUTHORISED: 401, RATE_LIMITED: 429, UNAVAILABLE: 503}.get(fault.rpc_code)
            wait = fault.data.get("retry_after")
            return RpcReply.json(error_reply(request_id_of(body), fault), status or 200, wait)
        except HubError as exc:
            if 400 <= exc.status < 500:  # the store refused the value itself
                refused = RpcFault(INVALID_PARAMS, f"invalid params: {exc}")
                return RpcReply.json(error_reply(request_id_of(body), refused))
            log.error("hub_storage_failed", error=str(exc))
            unavailable = RpcFault(UNAVAILABLE, "storage unavailable, retry later")
            return RpcReply.json(error_reply(request_id_of(body), unavailable), 503)

    async def _rpc(self, scope: Scope, body: bytes) -> RpcReply:
        # A key that is sent is checked first: a bad key is 401 whatever the body says.
        agent, bucket = await self._authenticate(_header(scope, b"authorization"), scope, True)
        message = parse_message(body)
        if message.notification:
            return ACCEPTED  # notifications/initialized, and any other
        if message.method in mcp.OPEN_METHODS:
            return RpcReply.json(envelope.result_reply(message.request_id, _open_method(message)))
        call = tool_call(message)
        wait = self.limiter.retry_after(bucket)
        if wait > 0:
            raise RpcFault(RATE_LIMITED, "rate limited", {"retry_after": math.ceil(wait)})
        try:
            payload = await self.tools.call(agent, call)
        except RpcFault as fault:
            if not fault.is_tool_error:
                raise
            return RpcReply.json(tool_error_reply(call.request_id, fault))
        return RpcReply.json(result_reply(call.request_id, payload))

    async def _authenticate(
        self, header: str, scope: Scope, optional: bool = False
    ) -> tuple[Agent | None, str]:
        """The agent whose key the ``Authorization`` ``header`` holds and its rate-limit
        bucket; with ``optional``, a request without one is anonymous (None), limited per IP."""
        scheme, _, token = header.partition(" ")
        if not header and optional:
            return None, f"ip:{client_ip(scope)}"
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
            header = request.headers.get("authorization", "")
            agent, key_hash = await self._authenticate(header, request.scope)
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


class Unread(Enum):
    """Why a request has no body to read: too large, or its client went away first."""

    TOO_BIG = "too big"
    GONE = "gone"


async def _receive_body(scope: Scope, receive: Receive, limit: int) -> bytes | Unread:
    """The body, or why there is none: TOO_BIG when it is larger than ``limit`` (found
    without reading all of it), GONE when the client disconnected first."""
    length = _header(scope, b"content-length")
    if length.isdigit() and int(length) > limit:
        return Unread.TOO_BIG
    body: bytes = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return Unread.GONE  # http.disconnect: no one to answer
        body += message.get("body", b"")
        if len(body) > limit:
            return Unread.TOO_BIG
        if not message.get("more_body", False):
            return body


def _header(scope: Scope, name: bytes) -> str:
    """The first value of the header ``name`` (lower case, as ASGI gives names), or ''."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


async def _read_form(request: Request) -> dict[str, Any] | Response:
    """The JSON object an ``/auth`` body holds, or the 4xx reply saying why there is none."""
    body = await _receive_body(request.scope, request.receive, MAX_AUTH_BYTES)
    if body is Unread.GONE:
        return _error(400, "the client went away before its body arrived")
    if body is Unread.TOO_BIG:
        return _error(413, f"the body exceeds {MAX_AUTH_BYTES} bytes")
    try:
        form = strictjson.loads(body)
    except JsonRefused as exc:
        return _error(400, f"the body was refused: {exc}")
    return form if isinstance(form, dict) else _error(400, "expected a JSON object")


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status)


#: Replies are encoded as Starlette's JSONResponse encodes them.
_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_JSON_TYPE = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class RpcReply:
    """A JSON-RPC endpoint's reply, as its status, raw headers and body: sent straight as
    ASGI messages, without a Starlette ``Response`` per request."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200, retry_after: Any = None) -> RpcReply:
        body = _ENCODE(payload).encode("utf-8")
        headers = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]
        if retry_after is not None:
            headers.insert(0, (b"retry-after", str(retry_after).encode("latin-1")))
        return cls(status, headers, body)

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


#: A notification's reply: no body.
ACCEPTED = RpcReply(202, [(b"content-length", b"0")])
#: What Starlette answers an exception in the app, and the JSON-RPC endpoint too.
SERVER_ERROR = PlainTextResponse("Internal Server Error", 500)


class RpcEndpoint:
    """The JSON-RPC endpoint as a plain ASGI app: its reply is sent as two ASGI messages,
    with no Starlette request or response objects (it runs for every call). An exception
    gets the 500 Starlette would send, and is raised on for the server to log."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            reply = await self.hub.answer(scope, receive)
        except Exception:
            await SERVER_ERROR(scope, receive, send)
            raise
        if reply is not None:
            await reply.send(send)


class HubApp:
    """The hub's ASGI app: a POST to ``/`` or ``/mcp`` goes to ``rpc`` at once, past
    Starlette's middleware and router, which serve every other request (their 404s and
    405s too, and any request under a ``root_path``)."""

    def __init__(self, rpc: ASGIApp, routes: Starlette) -> None:
        self.rpc = rpc
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in RPC_PATHS
            and not scope.get("root_path")
        ):
            await self.rpc(scope, receive, send)
        else:
            await self.routes(scope, receive, send)


RPC_PATHS = frozenset({"/", "/mcp"})


def build_app(
    store: HubStore,
    config: HubConfig,
    *,
    clock: Callable[[], float] = time.time,
    mailer: Mailer | None = None,
) -> HubApp:
    """The hub as an ASGI app over an opened ``store``; ``mailer`` sends verification mail."""
    hub = Hub(store, config, clock, mailer)
    per_ip = [Middleware(RateLimit, hub.ip_limiter)]
    auth = [Middleware(RateLimit, hub.ip_limiter, hub.auth_limiter)]
    rpc = RateLimit(RpcEndpoint(hub), hub.ip_limiter)
    routes = [
        Route("/", rpc, methods=["POST"]),
        Route("/mcp", rpc, methods=["POST"]),
        Route("/auth/agent-register", hub.register, methods=["POST"], middleware=auth),
        Route("/auth/verify", hub.verify_link, methods=["GET"], middleware=auth),
        Route("/auth/claim", hub.verify_link, methods=["GET"], middleware=auth),
        Route("/auth/verify", hub.verify_code, methods=["POST"], middleware=auth),
        Route("/auth/whoami", hub.whoami, methods=["GET"], middleware=per_ip),
        Route("/healthz", hub.health, methods=["GET"]),
    ]
    from autoresearchd.dashboard.mount import hub_routes  # jinja2 only where it is served

    return HubApp(rpc, Starlette(routes=[*routes, *hub_routes(store, config)]))
