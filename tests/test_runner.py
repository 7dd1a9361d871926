"""The runner against real subprocesses: outcomes, environment, workspace copy, group kills."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import tracemalloc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.config import ExperimentConfig
from autoresearchd.errors import RunError
from autoresearchd.models import KNOWN_METRICS, Candidate, Device
from autoresearchd.run_output import last_error_line
from autoresearchd.run_spec import RunSpec
from autoresearchd.runner import RunReport, prune_runs, run_experiment
from autoresearchd.testing import (
    ENV_FILE,
    PIDS_FILE,
    crash_script,
    env_dump_script,
    flood_script,
    hang_script,
    json_result_script,
    karpathy_output_script,
    nan_script,
    ok_script,
    stand_in_val_bpb,
    write_workspace,
)

from .full_disk import small_filesystem

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SEED = 7
GPU = Device(
    kind="cuda",
    index=1,
    uuid="GPU-0b1c2d3e-0000-4000-8000-000000000001",
    name="Fake H100",
    memory_total_mb=81559.0,
)

# Leaves a sleeping child (stdout inherited) behind and exits cleanly with a summary.
LEAVES_CHILD_BEHIND = """\
import json, os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open("pids.json", "w") as file:
    json.dump({"pid": os.getpid(), "grandchild": child.pid}, file)
print("---")
print("val_bpb: 1.5")
"""


def make_spec(tmp_path: Path, source: str, **changes: Any) -> RunSpec:
    workspace = tmp_path / "workspace"
    if not workspace.exists():
        write_workspace(workspace, "print('baseline')\n")
    spec = RunSpec(
        run_id="run-1",
        candidate=Candidate(source=source, parent_sha256=None, description="test"),
        device=Device.cpu(0),
        seed=SEED,
        track="synthetic",
        time_budget_s=20.0,
        grace_s=2.0,
        data_dir=tmp_path / "data",
        workspace=workspace,
        run_root=tmp_path / "runs",
        python=sys.executable,
        kill_grace_s=1.0,
    )
    return dataclasses.replace(spec, **changes)


def _proc_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` fields after the command name: state, ppid, pgrp, ..."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Where PID 1 does not reap, a killed orphan lingers as a zombie: dead, holding nothing.
    fields = _proc_fields(pid)
    return fields is not None and fields[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = _proc_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


async def _wait_for_pids(run_dir: Path) -> dict[str, int]:
    """The hang script's pids, once its grandchild runs inside the script's group."""
    path = run_dir / PIDS_FILE
    with anyio.fail_after(10):
        # Another process's files and pids cannot set an Event: polling is the only way.
        while not path.exists():  # noqa: ASYNC110
            await anyio.sleep(0.02)
    pids: dict[str, int] = json.loads(path.read_text())
    assert pids["grandchild"] in _group_members(pids["pid"])
    return pids


async def _assert_group_gone(pids: dict[str, int]) -> None:
    with anyio.fail_after(5):
        while _alive(pids["grandchild"]) or _group_members(pids["pid"]):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def _run_watching_pids(spec: RunSpec) -> tuple[RunReport, dict[str, int]]:
    reports: list[RunReport] = []

    async def run() -> None:
        reports.append(await run_experiment(spec))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        pids = await _wait_for_pids(spec.run_dir)
    return reports[0], pids


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_ok_run_parses_summary_after_carriage_return_progress(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ok_script(sleep_s=0.2))
    with capture_logs() as logs:
        report = await run_experiment(spec)

    assert report.outcome == "ok", report.error
    assert report.error == ""
    assert report.returncode == 0
    assert report.summary is not None
    expected = stand_in_val_bpb(0.01, 64, 2**5, SEED, 0.003)
    assert report.summary.val_bpb == pytest.approx(expected, abs=1e-6)
    assert report.summary.metrics["num_steps"] == 5
    assert report.duration_s >= 0.2
    assert report.started_at <= report.completed_at
    assert b"\rstep 5/5" in report.log_path.read_bytes()
    started = _events(logs, "run_started")
    assert started == [
        {
            "event": "run_started",
            "log_level": "info",
            "run_id": "run-1",
            "device": "cpu-0",
            "pid": started[0]["pid"],
        }
    ]
    exited = _events(logs, "run_process_exited")
    assert [(e["returncode"], e["outcome"]) for e in exited] == [(0, "ok")]


async def test_seed_reaches_the_script_and_moves_val_bpb(tmp_path: Path) -> None:
    first = await run_experiment(make_spec(tmp_path, ok_script(), run_id="a", seed=1))
    second = await run_experiment(make_spec(tmp_path, ok_script(), run_id="b", seed=2))

    assert first.summary is not None and second.summary is not None
    expected = [stand_in_val_bpb(0.01, 64, 32, seed, 0.003) for seed in (1, 2)]
    assert first.summary.val_bpb == pytest.approx(expected[0], abs=1e-6)
    assert second.summary.val_bpb == pytest.approx(expected[1], abs=1e-6)
    assert first.summary.val_bpb != second.summary.val_bpb


async def test_crash_reports_exit_code_and_last_exception_line(tmp_path: Path) -> None:
    report = await run_experiment(make_spec(tmp_path, crash_script()))

    assert report.outcome == "crash"
    assert report.returncode == 1
    assert report.error == "exit code 1: ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    ("source", "error"),
    [
        (nan_script(), "val_bpb is nan"),
        ("print('---')\nprint('val_bpb: inf')\n", "val_bpb is inf"),
        ("print('---')\nprint('loss: 1.0')\n", "val_bpb missing from summary"),
        ("print('done')\n", "no summary: output has no --- block and no result file"),
    ],
)
async def test_clean_exit_without_finite_val_bpb_is_a_crash(
    tmp_path: Path, source: str, error: str
) -> None:
    report = await run_experiment(make_spec(tmp_path, source))

    assert (report.outcome, report.returncode, report.error) == ("crash", 0, error)


async def test_json_result_file_takes_precedence_over_printed_summary(tmp_path: Path) -> None:
    report = await run_experiment(make_spec(tmp_path, json_result_script(1.25, 2.0)))

    assert report.outcome == "ok"
    assert report.summary is not None
    assert report.summary.val_bpb == 1.25
    assert report.summary.metrics == {"num_steps": 7.0, "tokens_per_s": 1234.5}


async def test_karpathy_summary_format_yields_every_known_metric(tmp_path: Path) -> None:
    report = await run_experiment(make_spec(tmp_path, karpathy_output_script()))

    assert report.outcome == "ok"
    assert report.summary is not None
    values = {"val_bpb": report.summary.val_bpb, **report.summary.metrics}
    assert values == {
        "val_bpb": 0.9979,
        "training_seconds": 300.1,
        "total_seconds": 325.9,
        "peak_vram_mb": 45060.2,
        "mfu_percent": 39.8,
        "total_tokens_M": 499.6,
        "num_steps": 953.0,
        "num_params_M": 50.3,
        "depth": 8.0,
    }
    assert set(values) == set(KNOWN_METRICS)


@pytest.mark.parametrize(
    ("device", "visible", "kind"),
    [(GPU, GPU.uuid, "cuda"), (Device.cpu(0), "", "cpu")],
)
async def test_child_gets_contract_environment_own_group_and_closed_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: Device, visible: str, kind: str
) -> None:
    monkeypatch.setenv("AUTORESEARCH_TEST_INHERITED", "yes")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    spec = make_spec(
        tmp_path,
        env_dump_script(),
        device=device,
        time_budget_s=12.5,
        extra_env={"EXTRA_FLAG": "on", "AUTORESEARCH_SEED": "999"},
    )
    report = await run_experiment(spec)

    assert report.outcome == "ok", report.error
    info = json.loads((spec.run_dir / ENV_FILE).read_text())
    env = info["env"]
    assert {key: env.get(key) for key in _CONTRACT_KEYS} == {
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "AUTORESEARCH_DEVICE": kind,
        "AUTORESEARCH_TIME_BUDGET": "12.5",
        "AUTORESEARCH_SEED": str(SEED),
        "AUTORESEARCH_TRACK": "synthetic",
        "AUTORESEARCH_DATA_DIR": str(tmp_path / "data"),
        "AUTORESEARCH_RESULT_FILE": str(spec.run_dir / "result.json"),
        "PYTHONUNBUFFERED": "1",
    }
    assert env["AUTORESEARCH_TEST_INHERITED"] == "yes"
    assert env["EXTRA_FLAG"] == "on"
    assert info["cwd"] == str(spec.run_dir)
    assert info["pgid"] == info["pid"]
    assert info["stdin"] == ""


_CONTRACT_KEYS = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "AUTORESEARCH_DEVICE",
    "AUTORESEARCH_TIME_BUDGET",
    "AUTORESEARCH_SEED",
    "AUTORESEARCH_TRACK",
    "AUTORESEARCH_DATA_DIR",
    "AUTORESEARCH_RESULT_FILE",
    "PYTHONUNBUFFERED",
)


async def test_workspace_copy_honours_ignore_patterns_and_skips_run_root(tmp_path: Path) -> None:
    workspace = write_workspace(
        tmp_path / "workspace",
        "print('baseline')\n",
        files={
            "helper.py": "X = 1\n",
            "data/tokens.bin": b"\x00\x01",
            ".git/HEAD": "ref: refs/heads/main\n",
            "__pycache__/helper.cpython-311.pyc": b"junk",
            "state/memory.sqlite": b"db",
            "result.json": '{"val_bpb": 0.1}',
        },
    )
    (workspace / "data-link").symlink_to(workspace / "data")
    # run_root inside the workspace, under a name no ignore pattern matches.
    run_root = workspace / "runs"
    source = ok_script()
    first = await run_experiment(make_spec(tmp_path, source, run_id="a", run_root=run_root))
    second = await run_experiment(make_spec(tmp_path, source, run_id="b", run_root=run_root))

    copied = {str(path.relative_to(second.run_dir)) for path in second.run_dir.rglob("*")}
    copied.discard("run.log")
    assert copied == {"train.py", "helper.py", "data", "data/tokens.bin", "data-link"}
    assert (second.run_dir / "data-link").is_symlink()
    assert (second.run_dir / "train.py").read_text() == source
    assert first.summary is not None and first.summary.val_bpb is not None
    assert first.summary.val_bpb > 1.0  # the stale result.json was not taken for this run's


async def test_existing_run_directory_is_refused(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ok_script())
    spec.run_dir.mkdir(parents=True)

    with pytest.raises(RunError, match=r"^run run-1: run directory .* already exists$"):
        await run_experiment(spec)


async def test_missing_interpreter_is_a_run_error(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, ok_script(), python=str(tmp_path / "no-python"))

    with pytest.raises(RunError, match=r"cannot start .*no-python: No such file or directory"):
        await run_experiment(spec)


async def test_timeout_terminates_group_and_sweeps_children_ignoring_sigterm(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, hang_script(ignore_sigterm=False), time_budget_s=0.5, grace_s=0.3)
    with capture_logs() as logs:
        report, pids = await _run_watching_pids(spec)

    assert report.outcome == "timeout"
    assert report.error == "exceeded budget 0.5s + grace 0.3s"
    assert report.returncode == -15
    assert 0.8 <= report.duration_s < 3.0
    assert _events(logs, "run_killed") == []
    await _assert_group_gone(pids)


async def test_hang_ignoring_sigterm_is_killed_with_its_whole_group(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, hang_script(ignore_sigterm=True), time_budget_s=0.5, grace_s=0.3)
    with capture_logs() as logs:
        report, pids = await _run_watching_pids(spec)

    assert report.outcome == "timeout"
    assert report.returncode == -9
    assert [e["run_id"] for e in _events(logs, "run_killed")] == ["run-1"]
    assert "hanging" in report.log_path.read_text()
    await _assert_group_gone(pids)


async def test_stop_event_ends_the_run_as_stopped(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, hang_script(ignore_sigterm=False))
    stop = anyio.Event()
    reports: list[RunReport] = []

    async def run() -> None:
        reports.append(await run_experiment(spec, stop=stop))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        pids = await _wait_for_pids(spec.run_dir)
        stop.set()

    assert reports[0].outcome == "stopped"
    assert reports[0].error == "stopped before finishing"
    assert reports[0].duration_s < 5
    await _assert_group_gone(pids)


async def test_cancelling_the_caller_kills_the_group_before_propagating(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, hang_script(ignore_sigterm=True))
    reports: list[RunReport] = []

    async def run() -> None:
        reports.append(await run_experiment(spec))

    with capture_logs() as logs:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run)
            pids = await _wait_for_pids(spec.run_dir)
            tasks.cancel_scope.cancel()

    assert reports == []
    assert [e["run_id"] for e in _events(logs, "run_killed")] == ["run-1"]
    await _assert_group_gone(pids)


async def test_children_left_behind_by_a_clean_exit_are_killed(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, LEAVES_CHILD_BEHIND)
    report = await run_experiment(spec)

    assert report.outcome == "ok", report.error
    assert report.duration_s < 5  # did not wait for the child holding the output pipe
    pids = json.loads((spec.run_dir / PIDS_FILE).read_text())
    await _assert_group_gone(pids)


async def test_output_flood_keeps_memory_bounded_and_caps_the_log(tmp_path: Path) -> None:
    flood_mib = 64
    spec = make_spec(tmp_path, flood_script(flood_mib), max_log_bytes=1 * MiB)
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        with capture_logs() as logs:
            report = await run_experiment(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib) / 1024

    assert report.outcome == "ok", report.error
    assert report.summary is not None
    assert report.summary.val_bpb == pytest.approx(stand_in_val_bpb(0.01, 64, 32, SEED, 0.0))
    assert peak < 2 * MiB
    assert rss_growth_mib < flood_mib / 4
    text = report.log_path.read_bytes()
    (capped,) = _events(logs, "run_log_capped")
    marker = b"\n[autoresearchd: %d bytes of output dropped]\n" % capped["dropped_bytes"]
    assert marker in text
    assert len(text) - len(marker) == 1 * MiB
    assert capped["dropped_bytes"] > (flood_mib - 1) * MiB
    assert text.rstrip().endswith(b"num_params_M:     0.049")


async def test_output_under_the_cap_is_logged_whole(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, flood_script(0.5), max_log_bytes=1 * MiB)
    with capture_logs() as logs:
        report = await run_experiment(spec)

    text = report.log_path.read_bytes()
    assert report.outcome == "ok"
    assert text.count(b"flood ") == (MiB // 2) // 128
    assert b"dropped" not in text
    assert _events(logs, "run_log_capped") == []


async def test_wrap_prefixes_the_command(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, env_dump_script(), wrap=lambda cmd: ["env", "WRAPPED=1", *cmd])
    report = await run_experiment(spec)

    assert report.outcome == "ok", report.error
    assert json.loads((spec.run_dir / ENV_FILE).read_text())["env"]["WRAPPED"] == "1"


def test_spec_from_config_takes_experiment_settings(tmp_path: Path) -> None:
    experiment = ExperimentConfig(workspace=tmp_path, script="main.py", time_budget_s=30.0)
    spec = RunSpec.from_config(
        experiment,
        run_root=tmp_path / "runs",
        run_id="x",
        candidate=Candidate(source="", parent_sha256=None, description=""),
        device=GPU,
        seed=3,
    )

    assert spec.command == [sys.executable, "main.py"]
    assert (spec.workspace, spec.limit_s) == (tmp_path, 30.0 + experiment.grace_s)
    assert spec.run_dir == tmp_path / "runs" / "x"


def test_last_error_line_prefers_the_final_exception_of_chained_tracebacks() -> None:
    output = (
        "step 1\n"
        "Traceback (most recent call last):\n"
        '  File "train.py", line 3, in <module>\n'
        "KeyError: 'lr'\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "train.py", line 5, in <module>\n'
        "    raise RuntimeError('bad config')\n"
        "RuntimeError: bad config\n"
        "cleanup done\n"
    )

    assert last_error_line(output) == "RuntimeError: bad config"
    assert last_error_line("loading\nCUDA out of memory\n\n") == "CUDA out of memory"
    assert last_error_line("") == ""


def test_prune_runs_removes_the_oldest_directories_beyond_keep(tmp_path: Path) -> None:
    for age, name in enumerate(["e", "d", "c", "b", "a"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (tmp_path / "notes.txt").write_text("not a run")

    assert prune_runs(tmp_path, keep=2) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e", "notes.txt"]
    assert prune_runs(tmp_path, keep=2) == 0
    assert prune_runs(tmp_path / "missing", keep=2) == 0


def test_prune_spares_live_runs_however_old(tmp_path: Path) -> None:
    """A long run's folder is older than the short runs started after it."""
    for name in ("live", "old", "new"):
        (tmp_path / name).mkdir()
    os.utime(tmp_path / "live", (1, 1))
    assert prune_runs(tmp_path, keep=1, live={"live"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "new"]


# Says it started, waits for the go-ahead, then prints more than a full disk can take.
WAITS_THEN_TALKS = """\
import pathlib, time
print("started", flush=True)
go = pathlib.Path({go!r})
while not go.exists():
    time.sleep(0.02)
for i in range(4000):
    print("progress line", i)
print("---")
print("val_bpb: 1.25")
"""


async def test_a_full_disk_under_the_run_log_loses_no_result(tmp_path: Path) -> None:
    """The log stops where the disk did; the run finishes and its summary is still read."""
    go = tmp_path / "go"
    with small_filesystem(tmp_path / "fs") as disk:
        spec = make_spec(tmp_path, WAITS_THEN_TALKS.format(go=str(go)), run_root=disk.path)
        reports: list[RunReport] = []

        async def run() -> None:
            reports.append(await run_experiment(spec))

        with capture_logs() as logs:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run)
                with anyio.fail_after(20):
                    while not spec.log_path.exists() or not spec.log_path.read_bytes():  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                disk.fill()
                go.touch()
        [report] = reports
        assert report.outcome == "ok", report.error
        assert report.summary is not None and report.summary.val_bpb == 1.25
        (incomplete,) = _events(logs, "run_log_incomplete")
        assert incomplete["error"] == "No space left on device"
        text = report.log_path.read_bytes()
        assert text.startswith(b"started\n") and b"val_bpb" not in text
