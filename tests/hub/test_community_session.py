"""The recorded community session replayed against our hub, on SQLite and on PostgreSQL.

``tests/fixtures/community/session.json`` records what an autoresearch-at-home client
sends and what it relies on in the public network's replies (claim, verify, publish,
upsert bests, list, search, hypotheses, insights). :mod:`tests.memory.test_community`
replays it onto a stand-in for the public network; here the same recording goes to a
real hub app, and every reply must hold what the client relies on: ``"success"``,
values decoded, org-relative names, an existing key as an error.

The one deliberate difference: our hub moves a shared best only by its best rules (a
verified agent naming its own stored result, with replicates), so the community's plain
upsert of ``best/metadata``, ``best/train_py`` and the tier's pair is refused, visibly,
and pulling the best then finds none. The agent's own ``best/agent/<agent>`` is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
import pytest

from tests.hub.support import TEST_HUB, InProcessHub, in_process_hub
from tests.memory.community import load_session, replay

pytestmark = pytest.mark.anyio

SESSION = load_session()
#: The recorded steps our hub answers differently, by design (see the module docstring).
REFUSED_BESTS = {
    "upsert the best source",
    "upsert the best metadata",
    "upsert the tier's source",
    "upsert the tier's metadata",
}


def our_hubs_steps() -> list[dict[str, Any]]:
    """The recording, with the shared-best upserts refused and the best then absent."""
    steps = []
    for step in SESSION["steps"]:
        step = dict(step)
        if step["note"] in REFUSED_BESTS:
            step.pop("reply", None)
            step["error"] = True
        if step["note"] == "pull the best":
            step["reply"] = {"results": [{"key_name": "best/train_py"}]}
            step["absent"] = True
        steps.append(step)
    return steps


@pytest.fixture
async def hub(database: Path | str) -> AsyncIterator[InProcessHub]:
    """A hub whose ``hub.org`` is the recorded org, so org-relative names are its."""
    hub = await in_process_hub(database, dataclasses.replace(TEST_HUB, org=SESSION["org"]))
    await hub.store.create_org(SESSION["org"], 0.0)
    yield hub
    await hub.store.close()


class AgentPoster:
    """A blocking ``post`` for :func:`replay`, run on the test's event loop as one agent."""

    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, path: str, /, *, json: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            return await self.client.post(path, json=json, headers=self.headers)

        return anyio.from_thread.run(send)


async def test_the_recorded_session_gets_the_replies_it_relies_on(hub: InProcessHub) -> None:
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://hub.test") as http:
        agents = {name: AgentPoster(http, await hub.agent(name)) for name in ("gpu0", "gpu1")}
        steps = our_hubs_steps()
        await anyio.to_thread.run_sync(lambda: replay(agents.__getitem__, steps))
        # The refusals left the shared best untouched; the agent's own best was written.
        names = [f"@{SESSION['org']}/best/{rest}" for rest in ("metadata", "agent/gpu0")]
        metadata, agent_best = await hub.store.get(names)
    assert metadata is None and agent_best is not None and agent_best.owner == "gpu0"
