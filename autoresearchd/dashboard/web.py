"""The dashboard's HTTP side: read-only pages and JSON data under ``/dashboard``.

:func:`dashboard_app` serves a :class:`~autoresearchd.dashboard.model.DashboardSource` as
server-rendered Jinja2 pages (autoescaped: every stranger-written text stays text) and
the JSON the page's own script polls for live updates. Only ``GET`` is routed. Every
reply carries security headers: a CSP that allows scripts, styles and requests from
this origin only (no inline script anywhere), ``X-Content-Type-Options: nosniff``, no
framing, no referrer. A private dashboard asks for HTTP Basic credentials whose password
is the read key (any user name), compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autoresearchd.dashboard import pages
from autoresearchd.dashboard.model import (
    MAX_POINTS,
    NOTE_KINDS,
    Cursor,
    DashboardSource,
    Filters,
    bounded,
)

HERE = Path(__file__).parent
PREFIX = "/dashboard"
#: Rows the overview shows of each list.
OVERVIEW_ROWS = 20
#: How often the page asks for news, in milliseconds.
DEFAULT_POLL_MS = 5000
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
STATUSES = ("keep", "discard", "crash", "timeout", "invalid")


@dataclass(frozen=True, slots=True)
class Settings:
    """How a dashboard is served: its title, read key, known floors and poll interval."""

    title: str = "autoresearchd"
    read_key: str | None = None
    floors: Mapping[str, float] = field(default_factory=dict)
    poll_ms: int = DEFAULT_POLL_MS
    clock: Callable[[], float] = time.time
    #: Seconds a client IP must wait before its next request (0: now); None: no limit.
    limit: Callable[[str], float] | None = None


class Guard:
    """ASGI middleware: the security headers on every reply, the read key when one is set,
    and a per-IP rate limit (``limit`` gives the seconds a client must wait, 0 when none)."""

    def __init__(
        self, app: ASGIApp, read_key: str | None, limit: Callable[[str], float] | None = None
    ) -> None:
        self.app = app
        self.read_key = read_key
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        client = scope.get("client") or ("unknown", 0)
        wait = self.limit(str(client[0])) if self.limit is not None else 0.0
        if wait > 0:
            seconds = str(math.ceil(wait))
            refusal = Response("Too many requests.\n", 429, {"retry-after": seconds})
            await refusal(scope, receive, send_with_headers)
            return
        if self.read_key is not None and not self._allowed(scope):
            refusal = Response(
                "This dashboard needs its read key.\n",
                401,
                {"www-authenticate": 'Basic realm="dashboard", charset="UTF-8"'},
                media_type="text/plain",
            )
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _allowed(self, scope: Scope) -> bool:
        assert self.read_key is not None
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            _, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(password, self.read_key.encode("utf-8"))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # stranger-written text (descriptions, names, sources) stays text
        # A record may lack any field (community clients write fewer): missing is empty.
        undefined=jinja2.Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=pages.when, bpb=pages.bpb, hours=pages.hours)
    env.globals.update(
        prefix=PREFIX, query=lambda **kw: urlencode({k: v for k, v in kw.items() if v})
    )
    return env


Handler = Callable[[Request], Awaitable[Response]]


class Dashboard:
    """The handlers, bound to one source and its settings."""

    def __init__(self, source: DashboardSource, settings: Settings) -> None:
        self.source = source
        self.settings = settings
        self.env = _environment()

    def _page(self, name: str, status: int = 200, **context: Any) -> Response:
        template = self.env.get_template(name)
        html = template.render(title=self.settings.title, poll_ms=self.settings.poll_ms, **context)
        return HTMLResponse(html, status)

    async def overview(self, request: Request) -> Response:
        tracks = await self.source.tracks()
        track = request.query_params.get("track") or (tracks[0] if tracks else "")
        return self._page(
            "overview.html",
            tracks=tracks,
            track=track,
            tier=request.query_params.get("tier", ""),
            standings=await self.source.standings(OVERVIEW_ROWS),
            recent=(await self.source.results(Filters(), None, OVERVIEW_ROWS)).rows,
            claims=await self.source.claims(self.settings.clock(), OVERVIEW_ROWS),
            devices=await self.source.devices(),
            floor=self.settings.floors.get(track),
        )

    async def results(self, request: Request) -> Response:
        filters, before, limit = _list_query(request)
        page = await self.source.results(filters, before, limit)
        return self._page(
            "results.html",
            page=page,
            filters=filters,
            limit=limit,
            statuses=STATUSES,
            next_query=_next_query(filters, page.next, limit),
        )

    async def result(self, request: Request) -> Response:
        detail = await self.source.detail(request.path_params["key"])
        if detail is None:
            return self._page("missing.html", 404, what="result")
        diff = pages.diff_lines(detail.parent_train_py, detail.train_py, detail.row.result_id)
        return self._page("result.html", detail=detail, diff=diff)

    async def leaderboard(self, request: Request) -> Response:
        return self._page("leaderboard.html", standings=await self.source.standings(200))

    async def lineage(self, request: Request) -> Response:
        tracks = await self.source.tracks()
        track = request.query_params.get("track") or (tracks[0] if tracks else "")
        steps = await self.source.lineage(track, 200)
        return self._page("lineage.html", tracks=tracks, track=track, steps=steps)

    async def notes(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "hypotheses")
        if kind not in NOTE_KINDS:
            kind = "hypotheses"
        return self._page("notes.html", kind=kind, notes=await self.source.notes(kind, 200))

    # --- JSON -------------------------------------------------------------------------

    async def api_summary(self, request: Request) -> Response:
        standings = await self.source.standings(OVERVIEW_ROWS)
        recent = await self.source.results(Filters(), None, OVERVIEW_ROWS)
        claims = await self.source.claims(self.settings.clock(), OVERVIEW_ROWS)
        devices = await self.source.devices()
        return _json(
            {
                "standings": [s.to_json() for s in standings],
                "recent": [row.to_json() for row in recent.rows],
                "claims": [vars_of(c) for c in claims],
                "devices": [vars_of(d) for d in devices],
            }
        )

    async def api_results(self, request: Request) -> Response:
        filters, before, limit = _list_query(request)
        page = await self.source.results(filters, before, limit)
        return _json(
            {
                "results": [row.to_json() for row in page.rows],
                "next": page.next.text() if page.next else None,
            }
        )

    async def api_points(self, request: Request) -> Response:
        track = request.query_params.get("track", "")
        tier = request.query_params.get("tier", "")
        limit = bounded(_int(request.query_params.get("limit"), MAX_POINTS), MAX_POINTS)
        rows = await self.source.points(track, tier, limit)
        return _json(pages.chart_series(rows, self.settings.floors.get(track)))

    async def api_leaderboard(self, request: Request) -> Response:
        standings = await self.source.standings(200)
        return _json({"standings": [s.to_json() for s in standings]})

    async def api_lineage(self, request: Request) -> Response:
        steps = await self.source.lineage(request.query_params.get("track", ""), 200)
        return _json({"steps": [vars_of(step) for step in steps]})

    async def api_notes(self, request: Request) -> Response:
        kind = request.query_params.get("kind", "hypotheses")
        if kind not in NOTE_KINDS:
            return _json({"error": f"kind must be one of {', '.join(NOTE_KINDS)}"}, 400)
        notes = await self.source.notes(kind, 200)
        return _json({"notes": [vars_of(note) for note in notes]})

    async def api_claims(self, request: Request) -> Response:
        claims = await self.source.claims(self.settings.clock(), 200)
        return _json({"claims": [vars_of(claim) for claim in claims]})

    async def trivial(self, request: Request) -> Response:
        """A page that reads nothing: the baseline the benchmark measures the others against."""
        return _json({"status": "ok"})


def vars_of(item: Any) -> dict[str, Any]:
    return {name: getattr(item, name) for name in item.__dataclass_fields__}


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return JSONResponse(payload, status, headers={"cache-control": "no-store"})


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _list_query(request: Request) -> tuple[Filters, Cursor | None, int]:
    q = request.query_params
    filters = Filters(
        agent=q.get("agent", ""),
        status=q.get("status", ""),
        tier=q.get("tier", ""),
        proposer=q.get("proposer", ""),
        track=q.get("track", ""),
    )
    before = Cursor.parse(q.get("before", ""))
    return filters, before, bounded(_int(q.get("limit"), 50))


def _next_query(filters: Filters, cursor: Cursor | None, limit: int) -> str:
    if cursor is None:
        return ""
    return urlencode({**filters.as_query(), "before": cursor.text(), "limit": str(limit)})


def dashboard_app(source: DashboardSource, settings: Settings) -> ASGIApp:
    """The dashboard as an ASGI app to mount at :data:`PREFIX`."""
    board = Dashboard(source, settings)
    routes = [
        Route("/", board.overview, methods=["GET"]),
        Route("/results", board.results, methods=["GET"]),
        Route("/result/{key:path}", board.result, methods=["GET"]),
        Route("/leaderboard", board.leaderboard, methods=["GET"]),
        Route("/lineage", board.lineage, methods=["GET"]),
        Route("/notes", board.notes, methods=["GET"]),
        Route("/api/summary", board.api_summary, methods=["GET"]),
        Route("/api/results", board.api_results, methods=["GET"]),
        Route("/api/points", board.api_points, methods=["GET"]),
        Route("/api/leaderboard", board.api_leaderboard, methods=["GET"]),
        Route("/api/lineage", board.api_lineage, methods=["GET"]),
        Route("/api/notes", board.api_notes, methods=["GET"]),
        Route("/api/claims", board.api_claims, methods=["GET"]),
        Route("/api/ping", board.trivial, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Guard(Starlette(routes=routes), settings.read_key, settings.limit)


def dashboard_routes(source: DashboardSource, settings: Settings) -> list[Route | Mount]:
    """The routes a server adds to serve the dashboard: the mount, and ``GET /`` to it."""

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", 303)

    return [Route("/", home, methods=["GET"]), Mount(PREFIX, dashboard_app(source, settings))]
