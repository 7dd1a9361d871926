"""A worker whose own baseline fails for this host's reasons halts and says so, instead of
publishing one crash record after another."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
from structlog.testing import capture_logs

from autoresearchd.daemon import Daemon
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.runtime import Runtime
from autoresearchd.sandbox import environment_failure
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.worker.status import DaemonStatus

pytestmark = pytest.mark.anyio

#: A baseline that needs a package this host lacks: every run of it or its mutations fails.
MISSING_PACKAGE = "import autoresearchd_no_such_package\nLR = 0.01  # search: log 0.001..0.1\n"


async def serve_briefly(daemon: Daemon, seconds: float) -> DaemonStatus:
    """Serve ``daemon`` for ``seconds`` once ready; its status just before draining."""
    codes: list[int] = []

    async def serve(*, task_status: TaskStatus[Runtime] = anyio.TASK_STATUS_IGNORED) -> None:
        codes.append(await daemon.serve(task_status=task_status))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            runtime: Runtime = await tg.start(serve)
            await anyio.sleep(seconds)
            status = await runtime.status()
            daemon.drain("test")
    assert codes == [0]
    return status


@pytest.mark.parametrize("workers", [1, 3])
async def test_baseline_that_cannot_import_halts_the_workers(tmp_path: Path, workers: int) -> None:
    """One worker publishes nothing; beside it, a mutation that failed before the baseline
    did may be published, but every worker then halts on its next such failure."""
    data_dir = tmp_path / "data"
    prepare_track("synthetic", data_dir)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "train.py").write_text(MISSING_PACKAGE)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "solo"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[devices]\ngpus = "none"\ncpu_workers = {workers}\n'
        f'[experiment]\nworkspace = "{workspace}"\ndata_dir = "{data_dir}"\n'
        'time_budget_s = 5.0\ngrace_s = 1.0\nsandbox = "off"\n'
    )
    with capture_logs() as logs:
        status = await serve_briefly(Daemon(config), 6.0)
    async with SqliteMemory(tmp_path / "state" / "memory.sqlite") as memory:
        published = await memory.results(limit=None)
    assert len(published) <= workers - 1, [r.description for r in published]
    halted = [e for e in logs if e["event"] == "worker_halted"]
    assert len(halted) == workers, [e["event"] for e in logs]
    assert all("ModuleNotFoundError" in e["error"] for e in halted)
    assert all(e["log_level"] == "error" for e in halted)
    started = [e for e in logs if e["event"] == "run_started"]
    assert len(started) <= 2 * workers - 1, "ran on past the halt"
    assert [d.state for d in status.devices] == ["halted"] * workers
    assert all("ModuleNotFoundError" in (d.halted or "") for d in status.devices)


@pytest.mark.parametrize(
    ("error", "environmental"),
    [
        (
            "exit code 2: can't open file '/root/s/runs/r/train.py': [Errno 13] Permission denied",
            True,
        ),
        (
            "exit code 1: PermissionError: [Errno 13] Permission denied: '/root/.venv/bin/python'",
            True,
        ),
        ("exit code 1: bwrap: Can't mkdir /root/x: Permission denied", True),
        ("exit code 1: ModuleNotFoundError: No module named 'torch'", True),
        ("exit code 1: RuntimeError: CUDA out of memory", False),
        ("val_bpb is nan", False),
        ("exit code 1: ZeroDivisionError: division by zero", False),
    ],
)
def test_environment_failures_are_told_from_script_failures(
    error: str, environmental: bool
) -> None:
    assert environment_failure(error) is environmental
