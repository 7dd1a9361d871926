"""The real daemon with the new strategies: a swarm hypothesis picked up, and an external agent.

``mixed`` must run a hypothesis another agent published and record which proposer made each
result; ``command`` must turn a stand-in agent's hostile script, empty output and overrun
into recorded outcomes while the worker keeps going, and run its good script.
"""

from __future__ import annotations

import re
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoresearchd.memory.protocol import Note
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.testing import plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track

from .daemon_process import DaemonProcess, stored_results, wait_for, write_config

pytestmark = pytest.mark.slow

#: A stand-in agent whose n-th call is hostile, silent, too slow, then good from then on.
AGENT = """\
import os, pathlib, sys, time
steps = pathlib.Path(sys.argv[1])
steps.mkdir(exist_ok=True)
n = len(list(steps.iterdir()))
(steps / str(n)).touch()
context = pathlib.Path(os.environ["AUTORESEARCH_CONTEXT_DIR"])
out = pathlib.Path(os.environ["AUTORESEARCH_OUTPUT_DIR"])
source = (context / "train.py").read_text()
if n == 0:
    (out / "train.py").write_text("import socket\\n" + source)
elif n == 2:
    time.sleep(60)
elif n >= 3:
    lr = 0.001 + 0.0001 * n
    (out / "train.py").write_text(source.replace("LR = 0.01", f"LR = {lr:.4f}", 1))
    (out / "description.txt").write_text(f"LR 0.01 → {lr:.4f}")
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


def configure(tmp_path: Path, data_dir: Path, proposer: list[str]) -> Path:
    write_plan(tmp_path / "plan", [])
    config = write_config(tmp_path, plan_script(sleep_s=0.2), data_dir, replicates=0)
    with config.open("a") as handle:
        handle.write("\n".join(["[proposer]", *proposer]) + "\n")
    return config


def run_until(config: Path, tmp_path: Path, done: Any, what: str) -> list[dict[str, Any]]:
    db = tmp_path / "state" / "memory.sqlite"
    daemon = DaemonProcess(config, tmp_path / "plan", tmp_path / "daemon.log")
    try:
        wait_for(lambda: done(stored_results(db)), timeout=90, what=what)
        assert daemon.proc.poll() is None, "the daemon kept running"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
    return stored_results(db)


async def publish_hypothesis(db: Path) -> None:
    value = {
        "title": "LR 0.01 → 0.0123 should help",
        "hypothesis": "a slightly higher learning rate",
        "suggested_config": {"LR": 0.0123},
        "agent_id": "alice",
        "created_at": 1.0,
        "status": "open",
    }
    async with SqliteMemory(db) as memory:
        assert await memory.put_note("hypotheses", Note("alice--lr", "alice", value, 1.0))


def ran_alices_note(result: dict[str, Any]) -> bool:
    return result["proposer"] == "hypotheses" and "LR = 0.0123  # search" in result["train_py"]


def test_mixed_strategy_runs_another_agents_hypothesis(tmp_path: Path, data_dir: Path) -> None:
    anyio.run(publish_hypothesis, tmp_path / "state" / "memory.sqlite")
    config = configure(
        tmp_path, data_dir, ['strategy = "mixed"', "weights = {hypotheses = 1.0, tpe = 0.5}"]
    )
    results = run_until(
        config,
        tmp_path,
        lambda rs: len(rs) >= 4 and any(ran_alices_note(r) for r in rs),
        "alice's hypothesis to be run",
    )
    # The daemon's workers share the keys they took: alice's note runs once, on whichever
    # best was current. (Follow-ups the daemon publishes itself after a keep may run too.)
    (picked,) = [r for r in results if ran_alices_note(r)]
    assert re.fullmatch(r"LR [0-9.]+ → 0\.0123", picked["description"])
    assert {r["proposer"] for r in results} <= {"baseline", "hypotheses", "tpe"}
    assert any(r["proposer"] == "tpe" for r in results)


def test_command_agent_failures_are_recorded_and_the_worker_goes_on(
    tmp_path: Path, data_dir: Path
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    command = [sys.executable, str(agent), str(tmp_path / "agent-steps")]
    config = configure(
        tmp_path,
        data_dir,
        [
            'strategy = "command"',
            f"command = {command!r}".replace("'", '"'),
            "command_timeout_s = 2.0",
        ],
    )
    results = run_until(
        config,
        tmp_path,
        lambda rs: (
            sum(r["proposer"] == "command" and r["val_bpb"] is not None for r in rs) >= 1
            and sum(r["proposer"] == "command" and r["val_bpb"] is None for r in rs) >= 3
        ),
        "the agent's failures and a good run",
    )
    failed = {r["error"]: r["status"] for r in results if r["proposer"] == "command" and r["error"]}
    assert failed == {
        "proposer command: script refused: line 1: new statement: import socket": "invalid",
        "proposer command: agent wrote no train.py": "crash",
        "proposer command: agent timed out after 2s": "crash",
    }
    good = [r for r in results if r["proposer"] == "command" and r["val_bpb"]]
    assert good[0]["description"].startswith("LR 0.01 → 0.00")
    assert good[0]["status"] in ("keep", "discard")
