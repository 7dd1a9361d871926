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
client IP (the ``/auth`` routes more tightly) and per key; a limited request gets 429 with
``Retry-After``. The limits live in each hub process, so they apply per replica. Errors
are JSON, never tracebacks: storage or mail trouble is 503 so that clients retry it, while
bodies go through :mod:`~autoresearchd.hub.strictjson` (hostile JSON is a parse error or
a 400) and a value a store cannot hold is invalid params, not an outage to retry.
:func:`serve` runs the app under uvicorn over the store ``hub.database`` names (a SQLite
file or ``sqlite:///`` URL, or a ``postgresql://`` URL that any number of replicas may
share) until SIGTERM, which is a clean stop (exit 0); :func:`init_hub`
creates the org and the admin key and seeds ``best/``; :func:`revoke_agent` makes a key
unusable; :func:`migrate_hub` applies PostgreSQL schema migrations. Nothing a guarantee
rests on is kept in process memory: only the rate limits (per replica, as above), a cache
of orgs seen to exist (orgs are never dropped) and the store's cache of keys, which every
change of an agent empties (:mod:`~autoresearchd.hub.keycache`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from autoresearchd.config import SQLITE_URL, Config, HubConfig
from autoresearchd.ensue import envelope, values
from autoresearchd.ensue.errors import (
    INVALID_PARAMS,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORISED,
    UNAVAILABLE,
)
from autoresearchd.errors import ConfigError, HubError
from autoresearchd.hub import batch, mcp, strictjson
from autoresearchd.hub.auth import (
    RateLimiter,
    Rules,
    hash_key,
    is_agent_name,
    is_email,
    new_api_key,
    new_verification_code,
)
from autoresearchd.hub.mail import Mailer, SmtpMailer, verification_message
from autoresearchd.hub.rpc import (
    Message,
    RpcFault,
    Tools,
    error_reply,
    parse_message,
    request_id_of,
    result_reply,
    tool_call,
    tool_error_reply,
)
from autoresearchd.hub.storage.auto import is_postgres_url, migrate_store, open_store
from autoresearchd.hub.storage.protocol import HubStore
from autoresearchd.hub.storage.rows import Agent, NewMemory
from autoresearchd.hub.strictjson import JsonRefused
from autoresearchd.models import sha256_text
from autoresearchd.statedir import StateDir

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger(__name__)

ADMIN = "admin"
MAX_AUTH_BYTES = 4096
MAX_CODE_CHARS = 128
#: How long a stopping hub waits for each of its other workers to finish its requests.
WORKER_STOP_S = 10.0


def database_path(config: Config) -> str | Path:
    """``hub.database``: a ``postgresql://`` URL, or the SQLite file (relative to the config),
    named as a path or as a ``sqlite:///`` URL (``sqlite:////srv/hub.sqlite`` is absolute)."""
    database = config.hub.database
    if is_postgres_url(database):
        return database
    if not database:
        return StateDir(config.daemon.state_dir).hub_database
    if database.startswith(SQLITE_URL):
        database = database[len(SQLITE_URL) :]
    path = Path(database).expanduser()
    return path if path.is_absolute() else (config.source.parent / path).resolve()


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
        limited = self._limit(request, self.ip_limiter)
        if limited is not None:
            return limited
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
            ip = request.client.host if request.client else "unknown"
            return None, f"ip:{ip}"
        if scheme.lower() != "bearer" or not token.strip():
            raise RpcFault(UNAUTHORISED, "missing Authorization: Bearer <key>")
        key_hash = hash_key(token.strip())
        agent = await self.store.agent_for(key_hash)
        if agent is None:
            raise RpcFault(UNAUTHORISED, "unknown API key")
        return agent, key_hash

    def _limit(self, request: Request, *limiters: RateLimiter) -> Response | None:
        """A 429 when any limiter refuses this client's IP, else None."""
        ip = request.client.host if request.client else "unknown"
        for limiter in limiters:
            wait = limiter.retry_after(ip)
            if wait > 0:
                seconds = math.ceil(wait)
                log.info("rate_limited", ip=ip, path=request.url.path, retry_after=seconds)
                return _too_many(seconds)
        return None

    async def register(self, request: Request) -> Response:
        limited = self._limit(request, self.ip_limiter, self.auth_limiter)
        if limited is not None:
            return limited
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
        limited = self._limit(request, self.ip_limiter, self.auth_limiter)
        if limited is not None:
            return limited
        name, code = request.query_params.get("agent", ""), request.query_params.get("code", "")
        if not await self._verify(name, code):
            return PlainTextResponse("This link is not valid: unknown agent or code.\n", 404)
        return PlainTextResponse(f"The agent {name} is verified. You may close this page.\n")

    async def verify_code(self, request: Request) -> Response:
        limited = self._limit(request, self.ip_limiter, self.auth_limiter)
        if limited is not None:
            return limited
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
        limited = self._limit(request, self.ip_limiter)
        if limited is not None:
            return limited
        try:
            agent, key_hash = await self._authenticate(request)
        except RpcFault as fault:
            return _error(401, str(fault))
        assert agent is not None  # a key is required here
        wait = self.limiter.retry_after(key_hash)
        if wait > 0:
            return _too_many(math.ceil(wait))
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


def _too_many(seconds: int) -> Response:
    return JSONResponse(
        {"error": f"rate limited; retry after {seconds} s", "retry_after": seconds},
        429,
        headers={"Retry-After": str(seconds)},
    )


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
    routes = [
        Route("/", hub.rpc, methods=["POST"]),
        Route("/mcp", hub.rpc, methods=["POST"]),
        Route("/auth/agent-register", hub.register, methods=["POST"]),
        Route("/auth/verify", hub.verify_link, methods=["GET"]),
        Route("/auth/claim", hub.verify_link, methods=["GET"]),
        Route("/auth/verify", hub.verify_code, methods=["POST"]),
        Route("/auth/whoami", hub.whoami, methods=["GET"]),
        Route("/healthz", hub.health, methods=["GET"]),
    ]
    from autoresearchd.dashboard.mount import hub_routes  # jinja2 only where it is served

    return Starlette(routes=[*routes, *hub_routes(store, config)])


def mailer_for(config: Config) -> Mailer | None:
    """The hub's mailer, or None when it sends no mail; a ConfigError names what is missing."""
    hub = config.hub
    try:
        if not hub.smtp_host:
            if hub.require_email:
                raise ConfigError(
                    "expected a mail server when hub.require_email = true", key="hub.smtp_host"
                )
            return None
        return SmtpMailer(hub)
    except ConfigError as exc:
        raise ConfigError(str(exc), path=str(config.source)) from None


async def serve(config: Config, *, migrate: bool = False, worker: bool = False) -> None:
    """Run the hub under uvicorn until cancelled or signalled; ``migrate`` first if asked.

    With ``hub.workers`` above one, this process starts the other workers (each a ``hub
    serve --worker``) once the database is ready, all of them listening on one port
    (``SO_REUSEPORT``: the kernel spreads connections), and stops them when it stops.
    """
    mailer = mailer_for(config)
    store = await open_store(database_path(config), migrate=migrate, pool_size=config.hub.pool_size)
    app = build_app(store, config.hub, mailer=mailer)
    server = uvicorn_server(app, config.hub.listen_host, config.hub.listen_port)
    shared = config.hub.workers > 1
    sockets = [_listen(config.hub.listen_host, config.hub.listen_port)] if shared else None
    others = [] if worker or not shared else _start_workers(config)
    log.info("hub_serving", host=config.hub.listen_host, port=config.hub.listen_port)
    try:
        with _sigterm_is_a_clean_stop():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(store.watch)
                await server.serve(sockets=sockets)
                tasks.cancel_scope.cancel()
    finally:
        _stop_workers(others)
        await store.close()
    log.info("hub_stopped")


def uvicorn_server(app: Any, host: str, port: int) -> uvicorn.Server:
    """uvicorn as the hub runs it, with its C fast paths (httptools, and uvloop where the
    caller's loop is uvloop) whenever they are installed, and no access log."""
    import uvicorn  # the server is needed only here, not by tests that drive the app

    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    return uvicorn.Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket that the other workers' sockets may share (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def _start_workers(config: Config) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "autoresearchd", "hub", "serve", "--worker"]
    command += ["--config", str(config.source)]
    return [subprocess.Popen(command) for _ in range(config.hub.workers - 1)]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        proc.terminate()
    for proc in workers:
        try:
            proc.wait(timeout=WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fast_loop_options() -> dict[str, Any]:
    """``anyio.run`` backend options that run the hub on uvloop when it is installed."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") is not None else {}


@contextmanager
def _sigterm_is_a_clean_stop() -> Iterator[None]:
    """Let ``hub serve`` exit 0 when SIGTERM stopped it cleanly.

    uvicorn shuts down on SIGTERM and then raises the signal again under the handler it
    found, so the process dies by it (exit 143) and a service manager logs a failure. Under
    this no-op handler the signal raised again does nothing and serve returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def init_hub(config: Config, baseline: Path | None) -> str:
    """Create the org and the admin agent, seed ``best/``; return the admin API key."""
    org = config.hub.org
    if not org:
        raise ConfigError("expected an organisation name", path=str(config.source), key="hub.org")
    store = await open_store(database_path(config), migrate=True)
    try:
        return await _init(store, org, baseline, time.time())
    finally:
        await store.close()


async def revoke_agent(config: Config, name: str) -> bool:
    """Revoke ``name``'s API key; every hub process on the database refuses it from now on
    (PostgreSQL replicas once the notification reaches them). False: no such live key."""
    store = await open_store(database_path(config))
    try:
        revoked = await store.revoke(name, time.time())
    finally:
        await store.close()
    log.info("agent_revoked", agent=name, revoked=revoked)
    return revoked


async def migrate_hub(config: Config) -> str:
    """Bring the hub's database schema up to date; one line that says what was applied.

    A SQLite database migrates itself whenever it is opened, so for it this only opens it.
    """
    report = await migrate_store(database_path(config))
    log.info("hub_migrated", report=report)
    return report


async def _init(store: HubStore, org: str, baseline: Path | None, now: float) -> str:
    source = _read_baseline(baseline) if baseline is not None else None
    await store.create_org(org, now)
    api_key = new_api_key()
    admin = Agent(ADMIN, is_admin=True, verified=True)
    if not await store.register(admin, hash_key(api_key), hash_key(new_verification_code()), now):
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
        value = values.encode(text)
        await store.create(
            Agent(ADMIN, is_admin=True, verified=True),
            NewMemory(f"@{org}/{rest}", value, True, rest),
            now,
            detail=json.dumps(metadata) if rest == "best/metadata" else "",
        )
