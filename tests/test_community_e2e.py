"""Our daemon and a community client on one hub, end to end.

A real ``hub serve`` on loopback; our daemon (one CPU worker, the plan stand-in for
train.py, hypotheses as its first proposer) registered as ``nova``; and the
re-creation of the autoresearch-at-home client (``tests/community/coordinator.py``)
registered as ``gpu0``. Before the daemon starts, gpu0 claims one experiment (and keeps
running it), runs and publishes another, and posts three hypotheses: the two it holds
and one it leaves open. Then each must see the other's results, claims and hypotheses,
and no experiment may run twice: the daemon picks up gpu0's hypotheses but runs only
the open one, and everything the daemon ran reads to gpu0's client as already done.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoresearchd.hyperparams import parse_params
from autoresearchd.memory import EnsueMemory, Note
from autoresearchd.mutation import apply_changes, describe
from autoresearchd.testing import write_plan
from tests.community.coordinator import RESULT_FIELDS, Coordinator

from .daemon_process import wait_for
from .test_network_e2e import (
    ORG,
    TRACK,
    Agent,
    Hub,
    data_dir,
    running_hub,
    write_daemon_config,
    write_key,
    write_workspace,
)

pytestmark = pytest.mark.slow

__all__ = ["data_dir"]  # the module-scoped fixture, shared with the network e2e test


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Hub, Path]]:
    workspace = write_workspace(tmp_path)
    with running_hub(tmp_path / "hub", workspace / "train.py") as hub:
        yield hub, workspace


def nova(tmp_path: Path, hub: Hub, workspace: Path, data_dir: Path) -> Agent:
    folder = tmp_path / "nova"
    folder.mkdir()
    key_file = write_key(folder, hub.register("nova"))
    config = write_daemon_config(folder, "nova", hub, key_file, workspace, data_dir)
    with config.open("a") as handle:
        handle.write(
            # The hub's bare best/ is the synthetic track's, so the community's records
            # (which name no track) are of ours: their hypotheses apply to our runs.
            f'org_track = "{TRACK}"\n'
            "[proposer]\n"
            'strategy = "mixed"\n'
            "[proposer.weights]\n"
            "hypotheses = 1000.0\n"
            "perturb = 1.0\n"
        )
    plan_dir = folder / "plan"
    write_plan(plan_dir, [])
    return Agent("nova", folder, config, plan_dir)


def results_cli(agent: Agent) -> list[dict[str, Any]]:
    """``autoresearchd results --json``, as a user reads the swarm's results."""
    command = ["results", "--config", str(agent.config), "--json", "--limit", "1000"]
    shown = subprocess.run(
        [sys.executable, "-m", "autoresearchd", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    found: list[dict[str, Any]] = json.loads(shown.stdout)
    return found


def post_our_hypothesis(hub: Hub, key: str) -> None:
    async def post() -> None:
        async with EnsueMemory(hub.url, ORG, key, primary_track=TRACK) as memory:
            note = Note(
                "nova--width-96",
                "nova",
                {"title": "WIDTH 64 → 96", "suggested_config": {"WIDTH": 96}},
                1.0e9,
            )
            assert await memory.put_note("hypotheses", note)

    anyio.run(post)


def test_our_daemon_and_a_community_client_share_one_hub(
    tmp_path: Path, hub: tuple[Hub, Path], data_dir: Path
) -> None:
    server, workspace = hub
    source = (workspace / "train.py").read_text()
    params = parse_params(source)
    held, done, open_ = ({"LR": 0.02}, {"LR": 0.03}, {"WIDTH": 80})
    held_d, done_d, open_d = (describe(params, c) for c in (held, done, open_))

    gpu0 = Coordinator(server.url, ORG, server.register("gpu0"), "gpu0")
    try:
        gpu0.initialize()
        held_key = gpu0.claim_experiment(held_d)
        done_key = gpu0.claim_experiment(done_d)
        assert held_key and done_key, gpu0.said
        gpu0.publish_result(done_key, done_d, 3.05, apply_changes(source, done), status="discard")
        for changes in (held, done, open_):
            title = describe(params, changes)
            gpu0.post_hypothesis(title, f"try {title}", changes, [])

        agent = nova(tmp_path, server, workspace, data_dir)
        agent.start()
        try:
            wait_for(
                lambda: (
                    len(agent.events("result_published")) >= 3
                    and len(agent.events("claim_held_by_community")) >= 2
                ),
                timeout=120,
                what="nova to publish runs and meet gpu0's claims",
            )
            agent.daemon.signal(signal.SIGTERM)  # type: ignore[union-attr]
            agent.wait_stopped()
        finally:
            if agent.daemon is not None:
                agent.daemon.kill()

        # --- we see theirs ------------------------------------------------------------
        blocked = agent.events("claim_held_by_community")
        assert {e["description"] for e in blocked} >= {held_d, done_d}
        picked = agent.events("hypothesis_picked")
        assert "gpu0" in {e["author"] for e in picked}
        shown = results_cli(agent)
        assert [r["description"] for r in shown if r["agent_id"] == "gpu0"] == [done_d]
        ours = [r for r in shown if r["agent_id"] == "nova"]
        ran = {r["description"] for r in ours}
        assert open_d in ran, "the open hypothesis was run"

        # --- no experiment runs twice -------------------------------------------------
        assert not ran & {held_d, done_d}, "nova ran an experiment gpu0 holds or ran"
        for description in ran:
            assert gpu0.blocked(description), f"gpu0 would run {description!r} again"
        assert gpu0.claim_experiment(open_d) is None

        # --- they see ours --------------------------------------------------------------
        records = gpu0.read_records("results/")
        mine = [r for r in records.values() if r["agent_id"] == "nova"]
        assert len(mine) == len(ours) and all(set(RESULT_FIELDS) <= r.keys() for r in mine)
        claims = [c for c in gpu0.read_records("claims/").values() if c["agent_id"] == "nova"]
        assert {c["description"] for c in claims} >= ran
        assert all(c["experiment_key"].startswith("nova--") for c in claims)
        post_our_hypothesis(server, (agent.folder / "api_key").read_text().strip())
        hits = gpu0.search("WIDTH 64 → 96", "hypotheses/", 5)
        assert any(json.loads(h["value"]).get("suggested_config") == {"WIDTH": 96} for h in hits)
        notes = gpu0.read_records("hypotheses/")
        titles = {n["title"] for n in notes.values() if n["agent_id"] == "nova"}
        shared = {e["title"] for e in agent.events("note_published") if e["kind"] == "hypotheses"}
        assert shared <= titles, "every hypothesis the daemon shared reads to gpu0's client"
    finally:
        gpu0.close()
