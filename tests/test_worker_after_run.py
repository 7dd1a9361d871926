"""What follows a run happens beside the next one: in order, never lost, never fatal."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoresearchd import outbox as outbox_module
from autoresearchd import runner
from autoresearchd.models import Result
from autoresearchd.sharing import Sharing
from autoresearchd.testing import PLAN_ENV, FakeNvml
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.worker import running as running_module
from autoresearchd.worker.afterrun import AfterRun
from tests.test_worker import run_daemon

pytestmark = pytest.mark.anyio

#: How long the slowed outbox takes to write one result: far longer than a run's gap.
SLOW_PUT_S = 1.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


class Timeline:
    """When each run started and ended, and when each result was written to the outbox."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float]] = []
        self.puts: list[tuple[str, float]] = []

    def watch(self, monkeypatch: pytest.MonkeyPatch, put_s: float = 0.0) -> None:
        real_run, real_put = runner.run_experiment, outbox_module.Outbox.put

        async def timed_run(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await real_run(*args, **kwargs)
            finally:
                self.runs.append((started, time.monotonic()))

        def slow_put(outbox: outbox_module.Outbox, result: Result) -> bool:
            time.sleep(put_s)
            written = real_put(outbox, result)
            self.puts.append((result.id, time.monotonic()))
            return written

        monkeypatch.setattr(running_module, "run_experiment", timed_run)
        monkeypatch.setattr(outbox_module.Outbox, "put", slow_put)


async def test_the_next_run_starts_before_the_last_result_is_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """With an outbox that takes a second to write, each next run still starts at once:
    the write goes on beside it."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    timeline = Timeline()
    timeline.watch(monkeypatch, put_s=SLOW_PUT_S)
    await run_daemon(tmp_path, data_dir, ["val=3.0"] * 40, 5, nvml=None)
    assert len(timeline.runs) >= 3
    first_put = timeline.puts[0][1]
    (_, first_end), (second_start, _) = timeline.runs[0], timeline.runs[1]
    assert second_start < first_put, "the second run waited for the first result's write"
    assert second_start - first_end < SLOW_PUT_S / 2


async def test_a_drain_right_after_a_run_loses_and_repeats_no_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """Results still on their way to a slow outbox when the daemon drains all reach the
    memory, once each, in the order they were written."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    timeline = Timeline()
    timeline.watch(monkeypatch, put_s=SLOW_PUT_S)
    stored = await run_daemon(tmp_path, data_dir, ["val=3.0"] * 40, 4, nvml=FakeNvml.with_gpus(2))
    written = [result_id for result_id, _ in timeline.puts]
    assert len(written) >= 2
    assert Counter(r.id for r in stored) == Counter(written)
    assert max(Counter(written).values()) == 1
    finished = [run for run in timeline.runs if run[1] - run[0] > 0.2]  # not stopped at once
    assert len(written) >= len(finished) - 2  # at most one run per device stopped by the drain


async def test_a_crash_after_a_run_does_not_stop_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """Sharing that crashes after every run costs its notes only: the runs go on without
    the worker's error pause, and every result is stored."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))

    async def crash(*args: object) -> None:
        raise RuntimeError("sharing broke")

    monkeypatch.setattr(Sharing, "share", crash)
    timeline = Timeline()
    timeline.watch(monkeypatch)
    stored = await run_daemon(tmp_path, data_dir, ["val=3.0"] * 40, 5, nvml=None)
    assert len(stored) >= 4
    assert len(stored) == len(timeline.puts)


async def test_steps_run_in_order_and_a_crash_costs_only_itself() -> None:
    after, done = AfterRun(), []

    async def step(name: str, delay: float) -> None:
        await anyio.sleep(delay)
        done.append(name)

    async def broken() -> None:
        raise RuntimeError("broken step")

    async with anyio.create_task_group() as tg:
        after.attach(tg)
        await after.then(lambda: step("slow", 0.2))
        await after.then(broken)
        await after.then(lambda: step("fast", 0.0))
        assert done == []  # nothing waited for: the caller went on at once
        await after.settled()
        assert done == ["slow", "fast"]
