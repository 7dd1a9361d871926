"""A daemon promotes on fresh replicates against the incumbent's own runs, never on luck.

One CPU worker runs the plan stand-in (autoresearchd/testing/scripts.py); its runs take the
scripted values in order: the baseline 3.0 (kept, the first best), candidate A's lucky
selecting run 2.5, two re-measures of the baseline (it has one run of the three the rule
wants), A's replicates 2.9 and 2.9 (kept: confirmed 2.9, the selecting run left out),
candidate B's selecting run 2.7 and its replicate 3.5 (a clear loser: stopped at once).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoresearchd.daemon import Daemon
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Result, Status
from autoresearchd.testing import PLAN_ENV, plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track

pytestmark = pytest.mark.anyio

PLAN = ["val=3.0", "val=2.5", "val=3.0", "val=3.0", "val=2.9", "val=2.9", "val=2.7", "val=3.5"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


async def run_solo(tmp_path: Path, data_dir: Path, runs: int) -> list[Result]:
    """A one-worker daemon on the plan stand-in until ``runs`` results are stored, oldest first."""
    write_plan(tmp_path / "plan", PLAN)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "train.py").write_text(plan_script(sleep_s=0.1))
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "solo"\nstate_dir = "{tmp_path / "state"}"\n'
        '[devices]\ngpus = "none"\ncpu_workers = 1\n'
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = 5.0\ngrace_s = 1.0\n'
        f'data_dir = "{data_dir}"\nreplicates = 4\nincumbent_runs = 3\nsandbox = "off"\n'
    )
    daemon, db = Daemon(config), tmp_path / "state" / "memory.sqlite"

    async def stop_when_done() -> None:
        while True:
            await anyio.sleep(0.5)
            if db.exists():
                async with SqliteMemory(db) as memory:
                    if len(await memory.results(limit=None)) >= runs:
                        break
        daemon.drain("test")

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_when_done)
        with anyio.fail_after(120):
            assert await daemon.serve() == 0
    async with SqliteMemory(db) as memory:
        results = await memory.results(limit=None)
    return sorted(results, key=lambda r: r.started_at)[: len(PLAN)]


async def test_a_lucky_run_is_confirmed_by_fresh_replicates_and_a_loser_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    results = await run_solo(tmp_path, data_dir, len(PLAN) + 1)
    seen = [(r.val_bpb, r.status, r.provisional, r.proposer) for r in results]
    baseline, a_first, *remeasures, a_2, a_3, b_first, b_2 = results
    assert seen[:2] == [
        (3.0, Status.KEEP, False, "baseline"),
        (2.5, Status.DISCARD, True, a_first.proposer),
    ]
    assert [(r.proposer, r.train_py_sha256, r.val_bpb) for r in remeasures] == [
        ("remeasure", baseline.train_py_sha256, 3.0)
    ] * 2
    assert {a_2.train_py_sha256, a_3.train_py_sha256} == {a_first.train_py_sha256}
    assert (a_2.provisional, a_3.status, a_3.confirmed_bpb) == (True, Status.KEEP, 2.9)
    assert b_first.train_py_sha256 == b_2.train_py_sha256 != a_first.train_py_sha256
    assert (b_first.provisional, b_2.status, b_2.provisional) == (True, Status.DISCARD, False)
    async with SqliteMemory(tmp_path / "state" / "memory.sqlite") as memory:
        best = await memory.get_best("synthetic")
    assert best is not None and (best.val_bpb, best.result_id) == (2.9, a_3.id)
