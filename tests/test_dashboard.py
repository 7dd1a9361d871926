"""The dashboard served by the hub app in-process: pages, data, escaping, headers, the key."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from autoresearchd.config import HubConfig
from autoresearchd.dashboard import VENDORED
from autoresearchd.dashboard.web import CSP, HERE
from autoresearchd.ensue.keys import slug
from autoresearchd.errors import ConfigError
from autoresearchd.models import Result
from tests.dashboard_support import HOSTILE, Swarm, fill
from tests.hub import conftest as hub_fixtures
from tests.hub.support import TEST_HUB, URL, in_process_hub

pytestmark = pytest.mark.anyio
# The hub's fixtures: each test runs on a SQLite store, then on a PostgreSQL one.
postgres, postgres_url, database = (
    hub_fixtures.postgres,
    hub_fixtures.postgres_url,
    hub_fixtures.database,
)
Board = tuple[httpx.AsyncClient, Swarm]

PUBLIC = replace(TEST_HUB, dashboard="public", org="test")
PAGES = (
    "/dashboard/",
    "/dashboard/results",
    "/dashboard/leaderboard",
    "/dashboard/lineage",
    "/dashboard/notes?kind=hypotheses",
    "/dashboard/notes?kind=insights",
)


async def served(database: Path | str, config: HubConfig) -> tuple[httpx.AsyncClient, Swarm]:
    hub = await in_process_hub(database, config)
    memories = {name: hub.memory(await hub.agent(name)) for name in ("alice", "bob", "carol")}
    for memory in memories.values():
        await memory.__aenter__()
    swarm = await fill(memories)
    for memory in memories.values():
        await memory.__aexit__(None, None, None)
    return httpx.AsyncClient(transport=hub.transport(), base_url=URL), swarm


@pytest.fixture
async def board(database: Path | str) -> AsyncIterator[tuple[httpx.AsyncClient, Swarm]]:
    client, swarm = await served(database, PUBLIC)
    async with client:
        yield client, swarm


async def test_every_page_and_endpoint_answers_with_security_headers(board: Board) -> None:
    client, _ = board
    for path in (*PAGES, "/dashboard/api/summary", "/dashboard/api/points?track=synthetic"):
        reply = await client.get(path)
        assert reply.status_code == 200, path
        assert reply.headers["content-security-policy"] == CSP
        assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"


async def test_no_page_carries_inline_script(board: Board) -> None:
    _, pages = await board_pages(board)
    for path, html in pages.items():
        assert "<script>" not in html.replace(escaped_hostile(), ""), path
        for line in html.splitlines():
            if "<script" in line:
                assert 'src="/dashboard/static/' in line and "</script>" in line, path
            assert " on" + "error=" not in line.lower().replace("onerror=alert", ""), path


async def board_pages(board: Board) -> tuple[httpx.AsyncClient, dict[str, str]]:
    client, swarm = board
    paths = [*PAGES, f"/dashboard/result/{key_of(swarm.hostile)}"]
    return client, {path: (await client.get(path)).text for path in paths}


def escaped_hostile() -> str:
    return (
        HOSTILE.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&#34;")
    )


def key_of(result: Result | None) -> str:
    """The key tail the client stored ``result`` under (``results/<agent>--<slug>--<id6>``)."""
    assert result is not None
    digest = hashlib.sha256(result.id.encode()).hexdigest()[:6]
    return f"{slug(result.agent_id)}--{slug(result.description)}--{digest}"


async def test_leaderboard_ranks_agents_by_confirmed_improvements(board: Board) -> None:
    client, _ = board
    standings = (await client.get("/dashboard/api/leaderboard")).json()["standings"]
    by_agent = {s["agent"]: s for s in standings}
    assert standings[0]["agent"] == "bob"
    assert by_agent["bob"] == {
        "agent": "bob",
        "improvements": 3,
        "keeps": 3,
        "runs": 4,
        "gpu_hours": round(4 * 300 / 3600, 3),
        "confirmations": 0,
    }
    assert by_agent["carol"]["runs"] == 7 and by_agent["carol"]["keeps"] == 0
    assert by_agent["alice"]["confirmations"] == 3  # her runs replicate bob's sources
    html = (await client.get("/dashboard/leaderboard")).text
    assert "<td>carol</td>" in html


async def test_results_filter_and_page_through_every_row(board: Board) -> None:
    client, swarm = board
    seen: list[str] = []
    query: str | None = "limit=4"
    while query is not None:
        data = (await client.get(f"/dashboard/api/results?{query}")).json()
        assert len(data["results"]) <= 4
        seen += [row["id"] for row in data["results"]]
        query = f"limit=4&before={data['next']}" if data["next"] else None
    assert seen == [r.id for r in reversed(swarm.results)]
    for name, value, expected in (
        ("agent", "carol", {r.id for r in swarm.results if r.agent_id == "carol"}),
        ("status", "keep", {r.id for r in swarm.results if r.status == "keep"}),
        ("tier", "medium", {r.id for r in swarm.results if r.vram_tier == "medium"}),
        ("proposer", "tpe", {r.id for r in swarm.results if r.proposer == "tpe"}),
    ):
        data = (await client.get(f"/dashboard/api/results?{name}={value}")).json()
        assert {row["id"] for row in data["results"]} == expected, name
        assert expected
    html = (await client.get("/dashboard/results?agent=alice&limit=2")).text
    assert html.count("<td>alice</td>") == 2 and "older results" in html


async def test_a_result_page_shows_metrics_device_seed_lineage_and_diff(board: Board) -> None:
    client, swarm = board
    improved = swarm.improved
    assert improved is not None
    html = (await client.get(f"/dashboard/result/{key_of(improved)}")).text
    assert '<span class="del">-LR = 0.06</span>' in html
    assert '<span class="add">+LR = 0.07</span>' in html
    assert "NVIDIA Test 16GB" in html and "mfu_percent" in html and "41.5" in html
    assert f"<td>{improved.seed}</td>" in html
    lineage = html.split("<h2>Lineage</h2>")[1].split("<h2>")[0]
    assert lineage.count("<td>bob</td>") == 2 and lineage.count("status keep") == 2
    assert lineage.index("LR 0.05 → 0.06") < lineage.index("LR 0.04 → 0.05")  # nearest first


async def test_a_hostile_description_is_rendered_as_text(board: Board) -> None:
    client, pages = await board_pages(board)
    for path, html in pages.items():
        assert HOSTILE not in html, path
    assert escaped_hostile() in pages["/dashboard/"]
    summary = (await client.get("/dashboard/api/summary")).json()
    assert summary["recent"][0]["description"] == HOSTILE  # JSON carries it as data


async def test_lineage_notes_and_claims_show_what_was_published(board: Board) -> None:
    client, _ = board
    steps = (await client.get("/dashboard/api/lineage?track=synthetic")).json()["steps"]
    assert [s["agent"] for s in steps[:3]] == ["bob", "bob", "bob"]
    assert steps[0]["val_bpb"] == pytest.approx(2.395)
    hypotheses = (await client.get("/dashboard/notes?kind=hypotheses")).text
    assert "LR 0.07 improved; try 0.09" in hypotheses and "<td>alice</td>" in hypotheses
    insights = (await client.get("/dashboard/notes?kind=insights")).text
    assert "crashed 1/1 runs" in insights
    claims = (await client.get("/dashboard/api/claims")).json()["claims"]
    assert [c["agent"] for c in claims] == ["carol"]


async def test_the_chart_series_has_one_point_per_scored_result(board: Board) -> None:
    client, swarm = board
    data = (await client.get("/dashboard/api/points?track=synthetic")).json()
    scored = [r for r in swarm.results if r.val_bpb is not None]
    assert data["count"] == len(data["t"]) == len(data["v"]) == len(scored)
    assert data["v"] == [r.val_bpb for r in scored]
    assert data["mark"].count("keep") == 3 and data["mark"].count("replicate") == 3
    kept = [r.description for r in scored if r.status == "keep"]
    assert [label for _, label, _ in data["keeps"]] == kept
    assert [v for _, v in data["best"]] == pytest.approx([2.49, 2.44, 2.39])


async def test_a_known_floor_travels_with_the_chart_and_the_page(tmp_path: Path) -> None:
    floored = replace(PUBLIC, dashboard_floors={"synthetic": 1.25})
    client, _ = await served(tmp_path / "hub.sqlite", floored)
    async with client:
        data = (await client.get("/dashboard/api/points?track=synthetic")).json()
        assert data["floor"] == 1.25
        assert 'data-floor="1.25"' in (await client.get("/dashboard/")).text
        other = (await client.get("/dashboard/api/points?track=shakespeare")).json()
        assert other["floor"] is None and other["count"] == 0


async def test_there_are_no_write_routes(board: Board) -> None:
    client, _ = board
    for path in ("/dashboard/", "/dashboard/api/results", "/dashboard/api/summary"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert (await client.request(method, path)).status_code == 405, (method, path)


async def test_a_private_dashboard_needs_its_read_key(tmp_path: Path) -> None:
    key_file = tmp_path / "read.key"
    key_file.write_text("sesame\n")
    os.chmod(key_file, 0o600)
    config = replace(PUBLIC, dashboard="private", dashboard_key_file=key_file)
    client, _ = await served(tmp_path / "hub.sqlite", config)
    async with client:
        refused = await client.get("/dashboard/api/summary")
        assert refused.status_code == 401 and "basic" in refused.headers["www-authenticate"].lower()
        assert refused.headers["x-content-type-options"] == "nosniff"
        wrong = await client.get("/dashboard/", auth=("anyone", "open"))
        assert wrong.status_code == 401
        allowed = await client.get("/dashboard/", auth=("anyone", "sesame"))
        assert allowed.status_code == 200 and "carol" in allowed.text


async def test_a_private_dashboard_refuses_an_open_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "read.key"
    key_file.write_text("sesame\n")
    os.chmod(key_file, 0o644)
    config = replace(PUBLIC, dashboard="private", dashboard_key_file=key_file)
    with pytest.raises(ConfigError, match=r"hub\.dashboard_key_file: mode 0644 is too open"):
        await in_process_hub(tmp_path / "hub.sqlite", config)


async def test_the_dashboard_is_rate_limited_per_client_ip(tmp_path: Path) -> None:
    client, _ = await served(tmp_path / "hub.sqlite", PUBLIC)
    await client.aclose()
    limited = replace(PUBLIC, rate_limit_ip_per_s=0.001, rate_limit_ip_burst=2)
    client, _ = await served_again(tmp_path / "hub.sqlite", limited)
    async with client:
        assert [(await client.get("/dashboard/api/ping")).status_code for _ in range(2)] == [
            200,
            200,
        ]
        refused = await client.get("/dashboard/leaderboard")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert refused.headers["x-content-type-options"] == "nosniff"


async def test_an_off_dashboard_is_not_served(tmp_path: Path) -> None:
    client, _ = await served(tmp_path / "hub.sqlite", replace(PUBLIC, dashboard="off"))
    async with client:
        assert (await client.get("/dashboard/")).status_code == 404


def test_the_vendored_chart_library_matches_its_recorded_hashes() -> None:
    for name, digest in VENDORED.items():
        assert hashlib.sha256((HERE / "static" / name).read_bytes()).hexdigest() == digest
        assert digest in (HERE / "static" / "VENDORED.md").read_text()


async def test_a_schema_2_sqlite_hub_gets_its_standings_when_it_is_opened(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "hub.sqlite"
    client, _ = await served(path, PUBLIC)
    async with client:
        before = (await client.get("/dashboard/api/leaderboard")).json()
    conn = sqlite3.connect(path, isolation_level=None)  # as schema 2 left it: none of these
    conn.execute("UPDATE results SET first_agent = ''")
    conn.execute("DELETE FROM standings")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.close()
    client, _ = await served_again(path, PUBLIC)
    async with client:
        assert (await client.get("/dashboard/api/leaderboard")).json() == before
        by_agent = {s["agent"]: s for s in before["standings"]}
        assert by_agent["alice"]["confirmations"] == 3


async def served_again(path: Path, config: HubConfig) -> tuple[httpx.AsyncClient, None]:
    """A second hub app over an existing database."""
    from autoresearchd.hub.app import build_app
    from autoresearchd.hub.storage.auto import open_store

    app = build_app(await open_store(path), config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=URL), None
