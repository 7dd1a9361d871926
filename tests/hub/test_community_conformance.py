"""The community's client against a real hub process, on SQLite and on PostgreSQL.

:mod:`tests.community.coordinator` behaves as the autoresearch-at-home client does. The
seven basic checks (connectivity, list a namespace, claim, claim-dedup, publish round
trip, pull best, search) and the other facts of its session: a best it cannot move
tells it so, hypotheses and insights round-trip, public reads need no key, invites
verify, an MCP client connects, and scores agree between the two stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from autoresearchd.testing.pgcluster import Cluster
from tests.community.coordinator import DEDUP_SIMILARITY, Coordinator, ToolError
from tests.daemon_process import cli
from tests.hub.support import ORG, free_port, serve_hub, write_hub_config

pytestmark = pytest.mark.slow

BASELINE = "# the org's baseline train.py\nprint('val_bpb: 1.000')\n"
IDEA = "Raise the matrix learning rate from 0.04 to 0.05 with warmup 200"


@dataclass
class Hub:
    """A served hub and its admin key; ``url`` is its JSON-RPC endpoint."""

    base: str
    admin_key: str
    clients: list[Coordinator] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.base + "mcp"

    def register(self, name: str) -> str:
        reply = httpx.post(f"{self.base}auth/agent-register", json={"name": name}, timeout=10)
        reply.raise_for_status()
        if "claim_url" in reply.json():
            httpx.get(reply.json()["claim_url"], timeout=10).raise_for_status()
        return str(reply.json()["api_key"])

    def client(self, api_key: str | None, agent: str) -> Coordinator:
        """A community client, closed when the hub stops."""
        self.clients.append(Coordinator(self.url, ORG, api_key, agent))
        return self.clients[-1]

    def agent(self, name: str) -> Coordinator:
        return self.client(self.register(name), name)

    def admin(self) -> Coordinator:
        return self.client(self.admin_key, "admin")


@contextmanager
def served_hub(folder: Path, database: str, **hub: Any) -> Iterator[Hub]:
    """``hub init --baseline`` then ``hub serve`` over ``database``."""
    port = free_port()
    config = write_hub_config(folder, port, database=database, **hub)
    baseline = folder / "train.py"
    baseline.write_text(BASELINE)
    init = cli("hub", "init", "--config", str(config), "--baseline", str(baseline))
    assert init.returncode == 0, init.stderr
    with serve_hub(config, folder / "hub.log"):
        served = Hub(f"http://127.0.0.1:{port}/", init.stdout.strip().splitlines()[-1])
        try:
            yield served
        finally:
            for client in served.clients:
                client.close()


def database_url(kind: str, folder: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return str(folder / "hub.sqlite")
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.create_schema(f"community_{folder.name[-12:].replace('-', '_')}")


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    with served_hub(tmp_path, database_url(request.param, tmp_path, request)) as served:
        yield served


# --- the seven basic checks ----------------------------------------------------------------


def test_connectivity_is_the_mcp_handshake_then_a_listing(hub: Hub) -> None:
    nova = hub.agent("nova")
    init = nova.initialize()
    assert init["protocolVersion"] == "2025-06-18" and "tools" in init["capabilities"]
    tools = {tool["name"]: tool for tool in nova.rpc("tools/list")["tools"]}
    for name in ("create_memory", "get_memory", "update_memory", "list_keys", "search_memories"):
        assert tools[name]["inputSchema"]["type"] == "object", name
    assert {"claim_invite", "create_invite", "share", "discover_memories", "delete_memory"} <= set(
        tools
    )
    assert nova.check_connectivity()


def test_listed_names_are_org_relative_and_read_back_as_the_client_builds_them(
    hub: Hub,
) -> None:
    nova = hub.agent("nova")
    nova.claim_experiment(IDEA)
    names = nova.list_namespace("claims/")
    assert names == [f"claims/{nova.experiment_key(IDEA)}"]
    records = nova.read_records("claims/")  # get_memory on @{org}/{key_name}
    assert records[names[0]]["agent_id"] == "nova"


def test_claim_writes_the_community_record(hub: Hub) -> None:
    nova = hub.agent("nova")
    key = nova.claim_experiment(IDEA, expected_duration_s=420)
    assert key is not None and "CLAIMED: " + key in nova.said
    entry = nova.get([f"claims/{key}"])[f"claims/{key}"]
    assert entry["description"] == f"[autoresearch] Claim: {IDEA}"
    record = json.loads(entry["value"])  # decoded by the hub, although sent as base64
    assert record == {
        "agent_id": "nova",
        "description": IDEA,
        "experiment_key": key,
        "claimed_at": record["claimed_at"],
        "expected_duration_seconds": 420,
        "status": "claimed",
    }


def test_a_claim_is_deduplicated_by_key_and_by_similarity_across_agents(hub: Hub) -> None:
    nova, raven = hub.agent("nova"), hub.agent("raven")
    assert nova.claim_experiment(IDEA) is not None
    assert nova.claim_experiment(IDEA) is None
    assert any(line.startswith("SKIP: already claimed") for line in nova.said)
    # Another agent's key differs; only search similarity can tell it is the same run.
    assert raven.claim_experiment(IDEA) is None
    assert any(line.startswith("SKIP: similar claim") for line in raven.said)
    assert raven.claim_experiment("Halve the batch size and double the steps") is not None


def test_publish_round_trips_every_field(hub: Hub) -> None:
    nova = hub.agent("nova")
    key = nova.claim_experiment(IDEA)
    assert key is not None
    source = BASELINE.replace("1.000", "0.990")
    published = nova.publish_result(key, IDEA, 0.99, source, extra={"num_steps": 1200})
    read = nova.read_records("results/")[f"results/{key}"]
    assert read == published and read["train_py"] == source
    assert set(read) >= {*published, "num_steps"}


def test_pull_best_and_a_refused_best_is_an_error_the_client_sees(hub: Hub) -> None:
    nova = hub.agent("nova")
    best = nova.pull_best()
    assert best is not None and best.train_py == BASELINE  # the source itself, decoded
    assert best.metadata["agent_id"] == "admin"
    key = nova.claim_experiment(IDEA)
    assert key is not None
    nova.publish_result(key, IDEA, 0.5, "print('better')\n")
    # The hub's best rules refuse the community's plain upsert of best/metadata: the
    # update is refused and the create that follows must fail visibly, not succeed.
    assert "NEW GLOBAL BEST!" not in nova.said
    assert any(line.startswith("UPSERT FAILED: best/metadata") for line in nova.said)
    assert nova.pull_best() == best
    # Its own best is its own to write: found by listing best/agent/, then read.
    assert "NEW PERSONAL BEST!" in nova.said
    assert (nova.agent_best("nova") or {})["val_bpb"] == 0.5


def test_search_scores_identical_text_near_one_and_other_text_lower(hub: Hub) -> None:
    nova = hub.agent("nova")
    nova.claim_experiment(IDEA)
    nova.claim_experiment("Use rotary embeddings with base 50000 instead of 10000")
    hits = nova.search(IDEA, "claims/")
    assert [0.0 <= hit["score"] <= 1.0 for hit in hits] == [True, True]
    assert hits[0]["key_name"] == f"claims/{nova.experiment_key(IDEA)}"
    assert hits[0]["score"] >= 0.99 and hits[1]["score"] < DEDUP_SIMILARITY
    near = nova.search(IDEA.replace("0.05", "0.06"), "claims/")[0]["score"]
    assert hits[1]["score"] < near < hits[0]["score"]


# --- the rest of a community session -------------------------------------------------------


def test_hypotheses_and_insights_round_trip_and_are_searchable(hub: Hub) -> None:
    nova = hub.agent("nova")
    hypothesis = nova.post_hypothesis(
        "Warmup matters more at high LR",
        "A longer warmup lets the higher matrix LR converge",
        {"warmup": 400},
        ["results/nova--x--000000"],
        priority=2,
    )
    insight = nova.post_insight("Weight decay above 0.1 always hurt", [])
    hypotheses, insights = nova.read_records("hypotheses/"), nova.read_records("insights/")
    assert hypotheses[hypothesis]["suggested_config"] == {"warmup": 400}
    assert hypotheses[hypothesis]["priority"] == 2
    assert insights[insight]["insight"] == "Weight decay above 0.1 always hurt"
    found = nova.search("Warmup matters more at high LR", "hypotheses/")
    assert found[0]["key_name"] == hypothesis and found[0]["score"] >= 0.99


def test_org_relative_names_are_accepted_in_writes(hub: Hub) -> None:
    nova = hub.agent("nova")
    created = nova.call_tool(
        "create_memory", {"items": [{"key_name": "insights/nova--plain", "value": "{}"}]}
    )
    assert created["results"][0] == {
        "key_name": "insights/nova--plain",
        "status": "success",
        "version": 1,
    }
    assert "insights/nova--plain" in nova.get(["insights/nova--plain"])


def test_public_namespaces_are_read_without_a_key_and_nothing_else_is(hub: Hub) -> None:
    nova, admin = hub.agent("nova"), hub.admin()
    key = nova.claim_experiment(IDEA)
    assert key is not None
    nova.publish_result(key, IDEA, 0.99, "print(1)\n")
    anonymous = hub.client(None, "guest")
    with pytest.raises(ToolError, match="Authorization"):
        anonymous.list_namespace("results/")
    board = {"standings": [{"agent_id": "nova", "val_bpb": 0.99}]}
    admin.call_tool("create_memory", {"items": [admin._item("leaderboard", board)]})
    for prefix in ("results/", "best/", "leaderboard"):
        assert admin.call_tool("share", {"action": "make_public", "prefix": prefix})["org"] == ORG
    assert anonymous.read_records("results/")[f"results/{key}"]["val_bpb"] == 0.99
    assert json.loads(anonymous.get(["leaderboard"])["leaderboard"]["value"]) == board
    best = anonymous.pull_best()
    assert best is not None and best.train_py == BASELINE
    assert anonymous.list_namespace("claims/") == []
    assert anonymous.get([f"claims/{key}"]) == {}
    with pytest.raises(ToolError, match="Authorization"):
        anonymous.call_tool("create_memory", {"items": [{"key_name": "results/x", "value": "{}"}]})
    found = anonymous.call_tool("discover_memories", {"query": IDEA})["results"]
    best_hits = {hit["key_name"] for hit in found if hit["score"] >= 0.99}
    assert nova.full(f"results/{key}") in best_hits
    assert all(hit["key_name"].startswith((f"@{ORG}/results/", f"@{ORG}/best/")) for hit in found)
    with pytest.raises(ToolError, match="admin"):
        nova.call_tool("share", {"action": "make_public", "prefix": "results/"})
    admin.call_tool("share", {"action": "make_private", "prefix": "leaderboard"})
    assert anonymous.get(["leaderboard"]) == {}


def test_agents_delete_only_their_own_keys_and_never_results(hub: Hub) -> None:
    nova, raven = hub.agent("nova"), hub.agent("raven")
    key = nova.claim_experiment(IDEA)
    assert key is not None
    nova.publish_result(key, IDEA, 0.99, "print(1)\n", status="discard")
    with pytest.raises(ToolError, match="belongs to nova"):
        raven.call_tool("delete_memory", {"key_name": f"claims/{key}"})
    with pytest.raises(ToolError, match="kept"):
        nova.call_tool("delete_memory", {"key_name": f"results/{key}"})
    assert nova.call_tool("delete_memory", {"key_name": f"claims/{key}"})["status"] == "deleted"
    assert nova.list_namespace("claims/") == [] and nova.search(IDEA, "claims/") == []
    with pytest.raises(ToolError, match="does not exist"):
        nova.call_tool("delete_memory", {"key_name": f"claims/{key}"})


def test_name_only_registration_then_an_invite_verifies(tmp_path: Path) -> None:
    settings = {"require_email": True, "name_only_registration": True, "smtp_host": "localhost"}
    with served_hub(tmp_path, str(tmp_path / "hub.sqlite"), **settings) as hub:
        reply = httpx.post(f"{hub.base}auth/agent-register", json={"name": "nova"}, timeout=10)
        assert reply.status_code == 200 and reply.json()["verified"] is False
        assert "claim_url" not in reply.json()  # no link: only an invite verifies it
        key = reply.json()["api_key"]
        invite = hub.admin().call_tool("create_invite", {"uses": 1})
        nova = hub.client(key, "nova")
        assert nova.call_tool("claim_invite", {"token": invite["token"]})["verified"] is True
        whoami = httpx.get(
            f"{hub.base}auth/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert whoami.json()["verified"] is True
        raven_key = hub.register("raven")
        with pytest.raises(ToolError, match="used up"):
            hub.client(raven_key, "raven").call_tool("claim_invite", {"token": invite["token"]})


def test_without_the_switch_name_only_registration_is_refused(tmp_path: Path) -> None:
    settings = {"require_email": True, "smtp_host": "localhost"}
    with served_hub(tmp_path, str(tmp_path / "hub.sqlite"), **settings) as hub:
        reply = httpx.post(f"{hub.base}auth/agent-register", json={"name": "nova"}, timeout=10)
        assert reply.status_code == 400 and "email" in reply.json()["error"]


def test_search_scores_are_the_same_on_sqlite_and_postgresql(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    queries = [IDEA, "matrix learning rate", "rotary embeddings", "warmup 200 steps"]
    scores = []
    for kind in ("sqlite", "postgresql"):
        folder = tmp_path / kind
        folder.mkdir()
        with served_hub(folder, database_url(kind, folder, request)) as hub:
            nova = hub.agent("nova")
            nova.claim_experiment(IDEA)
            nova.claim_experiment("Use rotary embeddings with base 50000 instead of 10000")
            nova.claim_experiment("Warmup for 200 steps, then cosine decay")
            scores.append(
                [[(h["key_name"], h["score"]) for h in nova.search(q, "claims/")] for q in queries]
            )
    assert scores[0] == scores[1]
    assert all(hits for hits in scores[0])


def test_an_mcp_sdk_client_connects_and_calls_tools(hub: Hub) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    key = hub.register("nova")

    async def session() -> tuple[str, list[str], dict[str, Any], bool]:
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            create_mcp_http_client(headers=headers) as http,
            streamable_http_client(hub.url, http_client=http) as (read, write),
            ClientSession(read, write) as mcp,
        ):
            init = await mcp.initialize()
            tools = await mcp.list_tools()
            listed = await mcp.call_tool("list_keys", {"prefix": "best/", "limit": 10})
            refused = await mcp.call_tool(
                "update_memory", {"key_name": "best/metadata", "value": "{}"}
            )
            text = listed.content[0].text  # type: ignore[union-attr]
            return (
                init.server_info.name,
                [t.name for t in tools.tools],
                json.loads(text),
                refused.is_error,
            )

    name, tools, listed, refused = anyio.run(session)
    assert name == "autoresearchd-hub" and "claim_invite" in tools
    assert [k["key_name"] for k in listed["keys"]] == ["best/metadata", "best/train_py"]
    assert refused is True
