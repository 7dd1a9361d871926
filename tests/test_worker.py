"""Workers in one daemon: no duplicate candidates, keep decisions, pipelined preparation."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import anyio
import pytest

from autoresearchd.daemon import Daemon
from autoresearchd.judging import improves
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Best, Result
from autoresearchd.testing import PLAN_ENV, FakeNvml, plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


def best(val: float) -> Best:
    return Best(
        track="t",
        tier=None,
        val_bpb=val,
        train_py="",
        train_py_sha256="x",
        result_id="r",
        agent_id="a",
        updated_at=0.0,
    )


@pytest.mark.parametrize(
    ("value", "current", "margin", "expected"),
    [
        (2.0, None, 0.001, True),
        (2.0, 2.5, 0.001, True),
        (2.499, 2.5, 0.001, False),
        (2.5, 2.5, 0.0, False),
        (float("nan"), None, 0.0, False),
        (None, 2.5, 0.0, False),
        (3.0, float("inf"), 0.001, True),
    ],
)
def test_improves(
    value: float | None, current: float | None, margin: float, expected: bool
) -> None:
    assert improves(value, None if current is None else best(current), margin) is expected


async def run_daemon(
    tmp_path: Path, data_dir: Path, plan: list[str], seconds: float, *, nvml: FakeNvml | None
) -> list[Result]:
    """Run a daemon in-process on the plan stand-in for ``seconds``; every stored result."""
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, plan)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "train.py").write_text(plan_script(sleep_s=0.3))
    devices = "" if nvml else '[devices]\ngpus = "none"\ncpu_workers = 1\n'
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "solo"\nstate_dir = "{tmp_path / "state"}"\nhealth_interval_s = 0.5\n'
        f"{devices}"
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = 5.0\ngrace_s = 1.0\n'
        # The plan stand-in reads and writes its plan folder, outside the run directory.
        f'data_dir = "{data_dir}"\nreplicates = 1\nsandbox = "off"\n'
    )
    daemon = Daemon(config, nvml=nvml)

    async def stop_soon() -> None:
        await anyio.sleep(seconds)
        daemon.drain("test")

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_soon)
        with anyio.fail_after(60):
            assert await daemon.serve() == 0
    async with SqliteMemory(tmp_path / "state" / "memory.sqlite") as memory:
        return await memory.results(limit=None)


async def test_workers_of_one_daemon_never_share_a_candidate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """Eight fake GPUs start at once: the baseline runs once, and no sha runs on two devices."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    results = await run_daemon(tmp_path, data_dir, [], 6, nvml=FakeNvml.with_gpus(8))
    devices_by_sha: dict[str, set[str]] = defaultdict(set)
    for result in results:
        if result.proposer != "remeasure":  # a deliberate rerun of the incumbent
            devices_by_sha[result.train_py_sha256].add(result.device_uuid)
    assert len(results) >= 8
    assert [r.description for r in results].count("baseline") == 1
    assert all(len(devices) == 1 for devices in devices_by_sha.values())
    # Only the baseline sets the first best unreplicated; the mutations run beside it don't.
    unreplicated = [r for r in results if r.status == "keep" and r.confirmed_bpb == r.val_bpb]
    assert [r.description for r in unreplicated] == ["baseline"]


async def test_a_result_is_judged_against_the_best_after_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """The second candidate is prepared while the baseline runs (no best yet); the baseline
    then sets a much better best, so the second result must be a discard, not a keep."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    results = await run_daemon(tmp_path, data_dir, ["val=2.0"] + ["val=3.0"] * 20, 3, nvml=None)
    assert len(results) >= 2
    kept = [r for r in results if r.status == "keep"]
    assert [r.description for r in kept] == ["baseline"]
    later = [r for r in results if r.description != "baseline"]
    assert all(r.delta_vs_best == pytest.approx(1.0) for r in later)


def test_two_daemons_cannot_share_a_state_directory(tmp_path: Path) -> None:
    from autoresearchd.daemon import state_lock
    from autoresearchd.errors import ConfigError

    with state_lock(tmp_path / "state"):
        with pytest.raises(ConfigError, match="already running with this state directory"):
            with state_lock(tmp_path / "state"):
                pass
    with state_lock(tmp_path / "state"):  # released with the first daemon
        pass
