"""The daemon and its outbox, against a full disk and bad files.

Under a full disk it keeps running, holds the finished result in memory, says so in
``status``, writes the result out when space returns, and never reports a flushed outbox
while a result exists only in memory. Bad outbox files are set aside at start-up, which
goes on, and a result parked for a passing cause is published after all.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from structlog.testing import capture_logs

from autoresearchd import daemon as daemon_module
from autoresearchd.daemon import Daemon
from autoresearchd.report import status_line, status_text
from autoresearchd.runtime import Runtime
from autoresearchd.testing import plan_script, write_plan
from autoresearchd.tracks.prepare import prepare_track
from tests.memory.conformance import make_result

from . import daemon_process
from .daemon_process import DaemonProcess, stored_results, wait_for
from .full_disk import SmallFilesystem, small_filesystem

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WAIT_S = 60

# Starts, waits for the test's go-ahead (the disk is full by then), and reports a score.
TRAIN_PY = """\
import pathlib, time
LR = 0.01
print("started", flush=True)
while not pathlib.Path({go!r}).exists():
    time.sleep(0.05)
print("---")
print("val_bpb:", 1.5 + LR)
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(tmp_path: Path, state_dir: Path, data_dir: Path) -> Path:
    """One CPU worker, its state on the small disk, and a memory nobody answers at: what
    reaches the outbox stays there, so the test sees every step."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text(TRAIN_PY.format(go=str(tmp_path / "go")))
    key = tmp_path / "api.key"
    key.write_text("test-key\n")
    key.chmod(0o600)
    lines = [
        "[daemon]",
        'agent = "tester"',
        f'state_dir = "{state_dir}"',
        "health_interval_s = 0.5",
        "[devices]",
        'gpus = "none"',
        "cpu_workers = 1",
        "[experiment]",
        f'workspace = "{workspace}"',
        f'data_dir = "{data_dir}"',
        "time_budget_s = 60.0",
        'sandbox = "off"',
        "[memory]",
        'backend = "ensue"',
        f'url = "http://127.0.0.1:{closed_port()}"',
        'org = "test"',
        f'api_key_file = "{key}"',
    ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def until(check: Callable[[], Any], what: str) -> None:
    try:
        with anyio.fail_after(WAIT_S):
            while not await check():  # noqa: ASYNC110 (state of other tasks and processes)
                await anyio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}") from None


async def held_result(runtime: Runtime, disk: SmallFilesystem, go: Path) -> dict[str, Any]:
    """Let the daemon's first run finish onto a full disk; its status once it holds it."""

    async def running() -> bool:
        run_id = runtime.workers[0].running.run_id
        log = runtime.ctx.config.run_dir / str(run_id) / "run.log"
        return run_id is not None and log.exists() and log.read_bytes() != b""

    await until(running, "the first run to start")
    disk.fill()
    await anyio.Path(go).touch()

    async def holding() -> bool:
        return bool((await runtime.snapshot())["outbox_held"])

    await until(holding, "the finished result to be held in memory")
    return await runtime.snapshot()


async def serve(
    daemon: Daemon,
    codes: list[int],
    *,
    task_status: TaskStatus[Runtime] = anyio.TASK_STATUS_IGNORED,
) -> None:
    codes.append(await daemon.serve(task_status=task_status))


async def test_a_full_disk_holds_the_result_and_writes_it_when_space_returns(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "FLUSH_TIMEOUT_S", 1.0)
    with small_filesystem(tmp_path / "fs") as disk, capture_logs() as logs:
        daemon = Daemon(write_config(tmp_path, disk.path / "state", data_dir))
        outbox_dir = daemon.config.outbox_dir
        codes: list[int] = []
        async with anyio.create_task_group() as tasks:
            runtime: Runtime = await tasks.start(serve, daemon, codes)
            snapshot = await held_result(runtime, disk, tmp_path / "go")
            assert snapshot["state"] == "running" and snapshot["outbox_depth"] >= 1
            assert snapshot["outbox_error"] == "No space left on device"
            assert "held in memory (No space left on device)" in status_line(snapshot)
            assert "held in memory: the disk refused them" in status_text(snapshot)
            assert not list(outbox_dir.glob("*.tmp")), "no empty temporary file left behind"
            held_id = runtime.ctx.outbox.held()[0].id

            disk.free()

            async def written() -> bool:
                return bool((await runtime.snapshot())["outbox_held"] == 0)

            await until(written, "the held result to reach the disk")
            assert (outbox_dir / f"{held_id}.json").is_file()
            daemon.drain("test")
        assert codes == [0]
    stopped = [e for e in logs if e["event"] == "daemon_stopped"]
    assert stopped[0]["outbox_flushed"] is False, "the memory never answered"
    assert stopped[0]["unsaved"] == 0
    assert any(e["event"] == "outbox_write_failed" for e in logs)
    assert any(e["event"] == "outbox_write_resumed" for e in logs)
    assert not any(e["event"] in ("worker_crashed", "daemon_failed") for e in logs)


async def test_stopping_with_a_result_only_in_memory_says_so_and_logs_the_record(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "FLUSH_TIMEOUT_S", 1.0)
    with small_filesystem(tmp_path / "fs") as disk, capture_logs() as logs:
        daemon = Daemon(write_config(tmp_path, disk.path / "state", data_dir))
        codes: list[int] = []
        async with anyio.create_task_group() as tasks:
            runtime: Runtime = await tasks.start(serve, daemon, codes)
            await held_result(runtime, disk, tmp_path / "go")
            daemon.drain("test")  # the disk is still full
        assert codes == [1], "a result that exists nowhere but the log is a failure"
    stopped = [e for e in logs if e["event"] == "daemon_stopped"]
    assert stopped[0]["outbox_flushed"] is False and stopped[0]["unsaved"] >= 1
    unsaved = [e for e in logs if e["event"] == "result_unsaved"]
    assert unsaved and unsaved[0]["record"]["val_bpb"] == pytest.approx(1.51)
    assert unsaved[0]["error"] == "No space left on device"


# -- bad files at start-up ------------------------------------------------------------------


BAD_ENTRIES = {
    "list.json": b"[]",
    "null.json": b"null",
    "text-time.json": json.dumps(
        {**make_result(id="text-time").to_record(), "completed_at": "2026-12-01T10:00:00Z"}
    ).encode(),
    "latin1.json": b'{"id": "latin1", "description": "caf\xe9"}',
    "cut.json": json.dumps(make_result(id="cut").to_record()).encode()[:50],
}


def test_bad_outbox_files_are_set_aside_and_start_up_goes_on(
    tmp_path: Path, data_dir: Path
) -> None:
    plan_dir = tmp_path / "plan"
    write_plan(plan_dir, ["ok"] * 20)
    config = daemon_process.write_config(tmp_path, plan_script(sleep_s=0.5), data_dir)
    outbox = tmp_path / "state" / "outbox"
    (outbox / "failed").mkdir(parents=True)
    for name, content in BAD_ENTRIES.items():
        (outbox / name).write_bytes(content)
    (outbox / "folder.json").mkdir()
    good = make_result(id="good")
    (outbox / "good.json").write_text(json.dumps(good.to_record()))
    parked = make_result(id="parked")  # parked by an older release for a passing cause
    (outbox / "failed" / "parked.json").write_text(json.dumps(parked.to_record()))
    (outbox / "failed" / "parked.reason").write_text("memory.sqlite: database or disk is full\n")
    db = tmp_path / "state" / "memory.sqlite"
    daemon = DaemonProcess(config, plan_dir, tmp_path / "daemon.log")
    try:
        wait_for(
            lambda: {"good", "parked"} <= {r["id"] for r in stored_results(db)},
            timeout=60,
            what="the good and the once-parked results to be published",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
    set_aside = [e for e in daemon.events() if e["event"] == "outbox_entry_set_aside"]
    names = sorted(Path(e["file"]).name for e in set_aside)
    assert names == sorted([*BAD_ENTRIES, "folder.json"]), "one line per bad file"
    for name in names:
        assert (outbox / "failed" / name).exists()
        assert (outbox / "failed" / name).with_suffix(".reason").read_text().strip()
    assert "Traceback" not in daemon.log_path.read_text()
