"""The command strategy inside a running daemon, with a deterministic stand-in agent.

The agent always makes the same change (LR 0.01 → 0.02) and logs each question it is
asked. Its first answer is prepared while the baseline runs; the baseline then sets the
first best, which is the candidate's own parent, so the candidate must still run. Once
nothing new is left to try, the same question must not be asked again and again. A
candidate dropped because the best moved elsewhere frees its claim before the next
proposal, so the same source proposed again from the new best runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.daemon import Daemon
from autoresearchd.gpus import Gpus
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Candidate, Device, Result, Status, sha256_text
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.testing import ok_script
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.worker import loop
from autoresearchd.worker.claims import Prepared
from autoresearchd.worker.context import WorkerContext
from autoresearchd.worker.loop import Worker
from tests.memory.conformance import make_result

pytestmark = pytest.mark.anyio

#: Asked anything, it answers LR = 0.02; it logs the parent and the history it was shown.
AGENT = """\
import hashlib, json, os, pathlib, sys
context = pathlib.Path(os.environ["AUTORESEARCH_CONTEXT_DIR"])
out = pathlib.Path(os.environ["AUTORESEARCH_OUTPUT_DIR"])
source = (context / "train.py").read_text()
shown = [(context / name).read_text() for name in ("results.json", "hypotheses.json")]
question = hashlib.sha256(json.dumps([source, *shown]).encode()).hexdigest()
with open(sys.argv[1], "a") as log:
    log.write(question + "\\n")
(out / "train.py").write_text(source.replace("LR = 0.01", "LR = 0.02"))
(out / "description.txt").write_text("LR 0.01 -> 0.02\\n")
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


def write_config(tmp_path: Path, data_dir: Path, questions: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "train.py").write_text(ok_script(sleep_s=0.5))
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    command = json.dumps([sys.executable, str(agent), str(questions)])
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "solo"\nstate_dir = "{tmp_path / "state"}"\nhealth_interval_s = 0.5\n'
        '[devices]\ngpus = "none"\ncpu_workers = 1\n'
        f'[experiment]\nworkspace = "{workspace}"\ndata_dir = "{data_dir}"\n'
        # The simple mean rule: this test is about what runs and what is asked, not promotion.
        'time_budget_s = 5.0\ngrace_s = 1.0\nreplicates = 1\npromotion = "mean"\nsandbox = "off"\n'
        f'[proposer]\nstrategy = "command"\ncommand = {command}\ncommand_timeout_s = 30.0\n'
    )
    return config


async def serve_until_kept(daemon: Daemon, tmp_path: Path, sha256: str, idle_s: float) -> None:
    """Serve ``daemon`` until ``sha256`` is kept (30 s at most), then ``idle_s`` longer."""

    async def stop_later() -> None:
        for _ in range(150):  # 30 s at most
            if await kept(tmp_path, sha256):
                break
            await anyio.sleep(0.2)
        await anyio.sleep(idle_s)
        daemon.drain("test")

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_later)
        with anyio.fail_after(90):
            assert await daemon.serve() == 0


async def kept(tmp_path: Path, sha256: str) -> bool:
    return any(r.status == "keep" and r.train_py_sha256 == sha256 for r in await stored(tmp_path))


async def stored(tmp_path: Path) -> list[Result]:
    db = tmp_path / "state" / "memory.sqlite"
    if not db.exists():  # the daemon has not opened its memory yet
        return []
    async with SqliteMemory(db) as memory:
        return await memory.results(limit=None)


async def test_a_deterministic_agents_candidate_runs_and_no_question_is_asked_twice(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short idle pause makes a worker that keeps asking show it within the test.
    monkeypatch.setattr(loop, "IDLE_PAUSE_S", 0.2)
    questions = tmp_path / "questions.txt"
    daemon = Daemon(write_config(tmp_path, data_dir, questions))
    wanted = sha256_text(ok_script(sleep_s=0.5, lr=0.02))
    with capture_logs() as logs:
        await serve_until_kept(daemon, tmp_path, wanted, idle_s=3.0)
    events = [entry["event"] for entry in logs]
    second_run = [i for i, event in enumerate(events) if event == "run_started"][1]
    # The answer prepared during the baseline is what runs next: no second question first.
    assert events[:second_run].count("agent_started") == 1
    runs = [r for r in await stored(tmp_path) if r.train_py_sha256 == wanted]
    runs.sort(key=lambda r: r.completed_at)  # the run, then its replicate
    assert [(r.status, r.provisional) for r in runs] == [("discard", True), ("keep", False)]
    asked = questions.read_text().split()
    assert len(asked) == len(set(asked)), f"the agent was asked the same question: {asked}"


#: Asked anything, it answers with the script in the file its first argument names.
FIXED_AGENT = """\
import os, pathlib, sys
out = pathlib.Path(os.environ["AUTORESEARCH_OUTPUT_DIR"])
(out / "train.py").write_text(pathlib.Path(sys.argv[1]).read_text())
"""


async def test_a_candidate_dropped_when_the_best_moved_can_be_proposed_again_at_once(
    tmp_path: Path,
) -> None:
    """The prepared candidate came from an older best, so it is dropped; the agent then
    proposes the same source from the new best, and it must run, not look already run."""
    baseline, answer = ok_script(), ok_script(lr=0.03)
    (tmp_path / "train.py").write_text(baseline)
    (tmp_path / "answer.py").write_text(answer)
    (tmp_path / "agent.py").write_text(FIXED_AGENT)
    config = parse_config(
        {
            "daemon": {"state_dir": str(tmp_path / "state")},
            "experiment": {"workspace": str(tmp_path), "sandbox": "off", "time_budget_s": 10.0},
            "proposer": {
                "strategy": "command",
                "command": [
                    sys.executable,
                    str(tmp_path / "agent.py"),
                    str(tmp_path / "answer.py"),
                ],
            },
        }
    )
    kept = make_result(train_py=baseline, status=Status.KEEP, vram_tier="cpu", val_bpb=1.2)
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        await memory.publish(kept)
        ctx = WorkerContext(config, memory, outbox, Publisher(outbox, memory), Gpus())
        cpu = Worker(Device.cpu(0), ctx)
        stale = Candidate(answer, sha256_text("an older best"), "LR 0.01 -> 0.03", "command")
        assert await cpu.claims.claim(stale)
        # Prepared while the run that kept the baseline went on.
        cpu.claims.prepared = Prepared(stale)
        cpu.best.kept(kept)
        with anyio.fail_after(60):
            await cpu.cycle()
    ran = [r for r in outbox.pending() if r.train_py_sha256 == stale.sha256]
    assert ran and {r.parent_sha256 for r in ran} == {kept.train_py_sha256}
    assert not ctx.ledger.in_flight(stale.sha256)
