"""Collective memory over the network, end to end: a real hub and two real daemons.

A user's setup, process for process: ``hub init --baseline`` then ``hub serve`` on
loopback, two agents registered over HTTP, and two ``autoresearchd run`` daemons (one
CPU worker each) pointed at the hub with ``memory.backend = "ensue"``. After a SIGTERM
the hub must hold every result each daemon queued, once; no candidate may have been run
by both daemons; and the best must be the minimum over the kept results. A second test
kills the hub mid-run: the daemons keep training, queue results on disk, and deliver
every one of them when the hub is back on the same port and database. A third starts
the daemons while the hub is down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.models import Best, Result, Status
from autoresearchd.outbox import Outbox
from autoresearchd.testing import plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track

from .daemon_process import DaemonProcess, wait_for
from .hub.support import cli, free_port, stop, wait_healthy, write_hub_config

pytestmark = pytest.mark.slow

ORG = "test"
TRACK = "synthetic"
AGENTS = ("alice", "bob")
REPLICATES = 1
#: How long the hub stays down at least: long enough for the publishers to back off a few times.
OUTAGE_S = 8.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track(TRACK, path)
    return path


# --- the hub -------------------------------------------------------------------------------


@dataclass
class Hub:
    """A hub set up with ``hub init``; :meth:`start` and :meth:`kill` its ``hub serve``."""

    folder: Path
    port: int
    admin_key: str
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def config(self) -> Path:
        return self.folder / "hub.toml"

    def start(self) -> None:
        self.starts += 1
        log_path = self.folder / f"hub-{self.starts}.log"
        with log_path.open("wb") as log_file:  # a file, not a pipe, which could fill up
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "autoresearchd",
                    "hub",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        wait_healthy(self.url, self.proc, log_path)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def register(self, name: str) -> str:
        """Register and verify, as a volunteer does: only verified agents move the best."""
        reply = httpx.post(f"{self.url}auth/agent-register", json={"name": name}, timeout=10)
        reply.raise_for_status()
        httpx.get(reply.json()["claim_url"], timeout=10).raise_for_status()
        return str(reply.json()["api_key"])

    def read(self) -> tuple[list[Result], Best | None, Best | None]:
        """Every stored result, the track's best and the cpu tier's best, as a client sees them."""

        async def read() -> tuple[list[Result], Best | None, Best | None]:
            async with EnsueMemory(self.url, ORG, self.admin_key, primary_track=TRACK) as memory:
                results = await memory.results(None, limit=None)
                return results, await memory.get_best(TRACK), await memory.get_best(TRACK, "cpu")

        return anyio.run(read)


@contextmanager
def running_hub(folder: Path, baseline: Path, **rules: Any) -> Iterator[Hub]:
    folder.mkdir()
    port = free_port()
    # The hub asks for as many confirming runs as the daemons make, and (unless a test
    # says otherwise) lets a daemon's own replicates supply them, as a one-person hub does.
    settings: dict[str, Any] = {"org": ORG, "replicates": REPLICATES, "replication": "any"}
    config = write_hub_config(folder, port, **(settings | rules))
    init = cli("hub", "init", "--config", str(config), "--baseline", str(baseline))
    assert init.returncode == 0, init.stderr
    hub = Hub(folder, port, admin_key=init.stdout.strip())
    hub.start()
    try:
        yield hub
    finally:
        if hub.proc is not None:
            stop(hub.proc)


# --- the daemons ---------------------------------------------------------------------------


def write_workspace(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text(plan_script(sleep_s=0.5))
    return workspace


def write_key(folder: Path, key: str) -> Path:
    path = folder / "api_key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return path


def write_daemon_config(
    folder: Path,
    agent: str,
    hub: Hub,
    key_file: Path,
    workspace: Path,
    data_dir: Path,
    experiment: dict[str, Any] | None = None,
) -> Path:
    lines = [
        "[daemon]",
        f'agent = "{agent}"',
        f'state_dir = "{folder / "state"}"',
        'log_format = "json"',
        "shutdown_grace_s = 20.0",
        "health_interval_s = 0.5",
        "[devices]",
        'gpus = "none"',
        "cpu_workers = 1",
        "[experiment]",
        f'workspace = "{workspace}"',
        f'data_dir = "{data_dir}"',
        "time_budget_s = 3.0",
        "grace_s = 1.0",
        "kill_grace_s = 1.0",
        f"replicates = {REPLICATES}",
        # The plan stand-in shares its plan folder with the test, outside its run directory.
        'sandbox = "off"',
        "[memory]",
        'backend = "ensue"',
        f'url = "{hub.url}"',
        f'org = "{ORG}"',
        f'api_key_file = "{key_file}"',
        # Claims taken before an outage outlast it and the publishers' catching up after it.
        "claim_ttl_s = 60.0",
    ]
    at = lines.index("[memory]")
    lines[at:at] = [f"{key} = {json.dumps(value)}" for key, value in (experiment or {}).items()]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Agent:
    name: str
    folder: Path
    config: Path
    plan_dir: Path
    daemon: DaemonProcess | None = None

    @property
    def outbox(self) -> Outbox:
        return Outbox(self.folder / "state" / "outbox")

    def start(self) -> None:
        self.daemon = DaemonProcess(self.config, self.plan_dir, self.folder / "daemon.log")

    def events(self, name: str) -> list[dict[str, Any]]:
        assert self.daemon is not None
        return [e for e in self.daemon.events() if e["event"] == name]

    def ids(self, name: str) -> set[str]:
        return {e["result_id"] for e in self.events(name)}

    def wait_stopped(self) -> None:
        assert self.daemon is not None
        assert self.daemon.wait(timeout=60) == 0, self.daemon.log_path.read_text()[-3000:]


@contextmanager
def registered_agents(
    tmp_path: Path,
    hub: Hub,
    workspace: Path,
    data_dir: Path,
    experiment: dict[str, Any] | None = None,
) -> Iterator[list[Agent]]:
    """Both agents registered on the hub and configured; their daemons are started later."""
    agents = []
    for name in AGENTS:
        folder = tmp_path / name
        folder.mkdir()
        key_file = write_key(folder, hub.register(name))
        config = write_daemon_config(folder, name, hub, key_file, workspace, data_dir, experiment)
        plan_dir = folder / "plan"
        write_plan(plan_dir, [])  # every run is "ok"
        agents.append(Agent(name, folder, config, plan_dir))
    try:
        yield agents
    finally:
        for agent in agents:
            if agent.daemon is not None:
                agent.daemon.kill()


# --- the checks ----------------------------------------------------------------------------


def check_every_result_arrived_once(agents: list[Agent], stored: list[Result]) -> None:
    stored_ids = [r.id for r in stored]
    assert len(stored_ids) == len(set(stored_ids)), "a result is stored twice"
    queued = set().union(*(agent.ids("result_queued") for agent in agents))
    assert queued, "the daemons queued no results"
    assert set(stored_ids) == queued, "the hub holds exactly what the daemons queued"
    for agent in agents:
        assert agent.ids("result_published") == agent.ids("result_queued"), agent.name
        assert agent.outbox.depth() == 0, f"{agent.name} left results in its outbox"
        assert not list(agent.outbox.failed_dir.iterdir()), f"the hub refused {agent.name}'s"
        assert {r.agent_id for r in stored if r.id in agent.ids("result_queued")} == {agent.name}
    for result in stored:  # other clients parse these records with strict JSON parsers
        json.dumps(result.to_record(), allow_nan=False)


def unclaimed(agents: list[Agent]) -> set[str]:
    """12-character hashes of candidates run without a claim, while the hub was away."""
    return {e["sha"] for agent in agents for e in agent.events("claim_unavailable")}


def check_no_candidate_run_twice(agents: list[Agent], stored: list[Result]) -> None:
    """One candidate, one agent, one run plus its replicates right after it.

    Only a candidate run while the hub was out of reach (so unclaimed) may also have
    been run by the other agent.
    """
    runs_by_agent: dict[str, list[Result]] = defaultdict(list)
    for result in sorted(stored, key=lambda r: r.started_at):
        runs_by_agent[result.agent_id].append(result)
    for name, runs in runs_by_agent.items():
        blocks = [len(list(group)) for _, group in groupby(r.train_py_sha256 for r in runs)]
        assert max(blocks) <= 1 + REPLICATES, f"{name} ran a candidate more than replication asks"
        assert len(blocks) == len({r.train_py_sha256 for r in runs}), f"{name} ran one again"
    agents_by_sha: dict[str, set[str]] = defaultdict(set)
    for result in stored:
        agents_by_sha[result.train_py_sha256].add(result.agent_id)
    shared = {sha[:12] for sha, names in agents_by_sha.items() if len(names) > 1}
    assert shared <= unclaimed(agents), "both daemons ran a candidate one of them had claimed"


def check_best_is_minimum_of_keeps(stored: list[Result], best: Best | None) -> None:
    """The best is a keep, and no keep of a candidate only one agent ran beats it.

    A candidate both agents ran unclaimed (the hub was away) has runs from both on the hub,
    which judges a keep's confirmed mean against all of them: the agent whose own mean was
    luckier than the pooled one is refused, by design.
    """
    keeps = [r for r in stored if r.status is Status.KEEP]
    assert keeps, "nothing was kept, though the seeded baseline has no score to beat"
    agents_by_sha: dict[str, set[str]] = defaultdict(set)
    for result in stored:
        agents_by_sha[result.train_py_sha256].add(result.agent_id)
    assert best is not None
    assert any(
        (r.train_py_sha256, r.best_bpb) == (best.train_py_sha256, best.val_bpb) for r in keeps
    )
    single = [r for r in keeps if len(agents_by_sha[r.train_py_sha256]) == 1]
    assert all(best.val_bpb <= r.best_bpb for r in single if r.best_bpb is not None)
    if len(single) == len(keeps):  # no candidate was shared: the minimum, exactly
        top = min(keeps, key=lambda r: (r.best_bpb, r.completed_at))
        assert (best.val_bpb, best.train_py_sha256) == (top.best_bpb, top.train_py_sha256)


def check_hub(agents: list[Agent], hub: Hub) -> None:
    stored, best, cpu_best = hub.read()
    check_every_result_arrived_once(agents, stored)
    check_no_candidate_run_twice(agents, stored)
    check_best_is_minimum_of_keeps(stored, best)
    check_best_is_minimum_of_keeps(stored, cpu_best)


def published(agent: Agent) -> int:
    return len(agent.events("result_published"))


def runs_started(agent: Agent) -> int:
    return len(agent.events("run_started"))


def stop_all(agents: list[Agent]) -> None:
    for agent in agents:
        assert agent.daemon is not None
        agent.daemon.signal(signal.SIGTERM)
    for agent in agents:
        agent.wait_stopped()


def train_through_outage(agents: list[Agent], hub: Hub) -> None:
    """Keep the hub down while each daemon starts runs and queues results; then restart it."""
    started = [runs_started(agent) for agent in agents]
    down_since = time.monotonic()
    wait_for(
        lambda: (
            time.monotonic() - down_since >= OUTAGE_S
            and all(
                runs_started(agent) >= n + 3 and agent.outbox.depth() >= 2
                for agent, n in zip(agents, started, strict=True)
            )
        ),
        timeout=60,
        what="training to go on, and results to queue, while the hub is down",
    )
    hub.start()
    wait_for(
        lambda: all(agent.outbox.depth() == 0 for agent in agents),
        timeout=45,
        what="the outboxes to empty once the hub is back",
    )


# --- the tests -----------------------------------------------------------------------------


def test_two_daemons_share_one_hub(tmp_path: Path, data_dir: Path) -> None:
    """Every result reaches the hub once, no candidate runs twice, the best is the minimum."""
    workspace = write_workspace(tmp_path)
    with (
        running_hub(tmp_path / "hub", workspace / "train.py") as hub,
        registered_agents(tmp_path, hub, workspace, data_dir) as agents,
    ):
        for agent in agents:
            agent.start()
        wait_for(
            lambda: all(published(agent) >= 6 for agent in agents),
            timeout=60,
            what="six results from each daemon",
        )
        stop_all(agents)
        assert not unclaimed(agents), "every run was claimed while the hub was up"
        check_hub(agents, hub)


def test_hub_outage_loses_nothing(tmp_path: Path, data_dir: Path) -> None:
    """With the hub down the daemons keep training; every queued result arrives when it is back."""
    workspace = write_workspace(tmp_path)
    with (
        running_hub(tmp_path / "hub", workspace / "train.py") as hub,
        registered_agents(tmp_path, hub, workspace, data_dir) as agents,
    ):
        for agent in agents:
            agent.start()
        wait_for(
            lambda: all(published(agent) >= 1 for agent in agents),
            timeout=60,
            what="a first result from each daemon",
        )
        hub.kill()
        train_through_outage(agents, hub)
        stop_all(agents)
        assert all(agent.events("publish_retry") for agent in agents)
        check_hub(agents, hub)


def test_daemons_start_while_the_hub_is_down(tmp_path: Path, data_dir: Path) -> None:
    """A daemon that cannot reach the hub at start still trains, and delivers later."""
    workspace = write_workspace(tmp_path)
    with (
        running_hub(tmp_path / "hub", workspace / "train.py") as hub,
        registered_agents(tmp_path, hub, workspace, data_dir) as agents,
    ):
        hub.kill()
        for agent in agents:
            agent.start()
        train_through_outage(agents, hub)
        wait_for(
            lambda: all(published(agent) >= 5 for agent in agents),
            timeout=30,
            what="results published after the hub came up",
        )
        stop_all(agents)
        check_hub(agents, hub)


def test_the_best_moves_only_on_other_agents_confirmations(tmp_path: Path, data_dir: Path) -> None:
    """Under the hub's default replication (``other-agent``), each daemon's keeps are
    claims; the other daemon reruns them with fresh seeds, and the best moves only once a
    claim is restated with those confirmations, never on one agent's runs alone."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    # The baseline's LR is far from the stand-in's optimum (0.01): raising it is a real gain.
    script = plan_script(sleep_s=0.3).replace("LR = 0.01  #", "LR = 0.0012  #", 1)
    (workspace / "train.py").write_text(script)
    # Every claim waiting gets a confirmation at once, and each daemon keeps a candidate
    # after two fresh replicates when the best has no score yet.
    confirming = {"confirm_share": 1.0, "confirm_share_max": 1.0, "confirmations": REPLICATES}
    with (
        running_hub(tmp_path / "hub", workspace / "train.py", replication="other-agent") as hub,
        registered_agents(tmp_path, hub, workspace, data_dir, confirming) as agents,
    ):
        for agent in agents:
            agent.start()

        def moves() -> list[Any]:
            async def read() -> list[Any]:
                async with EnsueMemory(hub.url, ORG, hub.admin_key, primary_track=TRACK) as m:
                    return await m.best_history(TRACK, limit=None)

            return anyio.run(read)

        wait_for(lambda: bool(moves()), timeout=120, what="a confirmed claim to move the best")
        stop_all(agents)
        stored, best, _ = hub.read()
        history = moves()
    by_id = {r.id: r for r in stored}
    confirmations = [r for r in stored if r.confirms and r.proposer == "confirm"]
    assert confirmations, "no daemon reran another agent's claim"
    for run in confirmations:
        claim = by_id[run.confirms]
        assert claim.status is Status.KEEP and claim.agent_id != run.agent_id, "its own claim"
        assert run.train_py_sha256 == claim.train_py_sha256 and run.seed != claim.seed
    own_keeps = [r for r in stored if r.status is Status.KEEP and r.proposer != "restated"]
    assert own_keeps, "no daemon kept a candidate"
    for change in history:
        restated = by_id[change.result_id]
        assert restated.proposer == "restated", "one agent's own runs moved the best"
        claim = by_id[restated.confirms]
        others = [
            r
            for r in confirmations
            if r.confirms == claim.id
            and r.agent_id != claim.agent_id
            and r.completed_at <= change.at
        ]
        assert len(others) >= REPLICATES, "the best moved before other agents confirmed it"
        # The best records the confirmations' mean, not the claimant's own figure.
        values = [r.val_bpb or 0.0 for r in others]
        assert min(values) <= (restated.confirmed_bpb or 0.0) <= max(values)
    assert best is not None and best.result_id == history[0].result_id
