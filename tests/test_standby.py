"""Standbys against real processes: the go signal, start-up timing, discarding, the sandbox,
and a daemon whose next run is started while the current one goes on."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoresearchd.config import ExperimentConfig
from autoresearchd.daemon import Daemon
from autoresearchd.early_stopping import LearningCurve
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Device, Result
from autoresearchd.records import Origin, build_result
from autoresearchd.run_process import prepare_run_dir as prepare
from autoresearchd.run_process import spawn
from autoresearchd.run_spec import RunSpec
from autoresearchd.runner import RunReport, run_experiment
from autoresearchd.sandbox_probe import probe
from autoresearchd.standby import Key, Standby, opts_in
from autoresearchd.testing import FakeNvml, ok_script
from autoresearchd.tracks.prepare import prepare_track
from autoresearchd.yielding import AUTOGROUP_NICENESS, NICENESS, group_threads

from .test_runner import make_spec
from .test_sandbox import spec_for
from .test_sandbox_reach import config_under, tool  # noqa: F401 (a fixture)

#: Sleeps INIT_S, waits for go, sleeps RUN_S, then writes when it started and went.
GO_SCRIPT = """\
import json, os, time
spawned = time.time()
time.sleep(float(os.environ.get("INIT_S", "0")))
from autoresearchd.harness.go import wait_for_go
ready = time.time()
waited = wait_for_go()
went = time.time()
time.sleep(float(os.environ.get("RUN_S", "0")))
with open("times.json", "w") as file:
    json.dump({"spawned": spawned, "ready": ready, "went": went, "waited": waited,
               "nice": os.nice(0)}, file)
print("---")
print("val_bpb: 1.0")
"""


def times(report: RunReport) -> dict[str, float]:
    path = report.run_dir / "times.json"
    assert path.exists(), report.error + "\n" + report.log_path.read_text()[-1500:]
    data: dict[str, float] = json.loads(path.read_text())
    return data


async def standby_run(spec: RunSpec, head_start_s: float) -> tuple[RunReport, float]:
    """Start ``spec`` as a standby, give it go after ``head_start_s``; the report and go."""
    prepare(spec)
    started = await spawn(spec)
    await anyio.sleep(head_start_s)
    go = time.time()
    return await run_experiment(spec, standby=started), go


def test_a_standby_waits_for_go_and_its_time_starts_there(tmp_path: Path) -> None:
    # The wait (2 s) is longer than budget + grace: the limit counts from go, not spawn.
    spec = make_spec(
        tmp_path, GO_SCRIPT, time_budget_s=0.5, grace_s=0.7, extra_env={"RUN_S": "0.2"}
    )
    report, go = anyio.run(standby_run, spec, 2.0)
    assert report.outcome == "ok", report.error
    seen = times(report)
    assert seen["went"] >= go
    assert seen["waited"] > 1.0  # its interpreter took the rest of the 2 s to start
    assert report.standby_s >= 2.0
    assert report.startup_s == 0.0  # ready long before its go: the device waited for nothing
    assert report.duration_s < 1.2
    assert report.started_at >= go - 0.05


def test_a_standby_still_starting_at_go_counts_the_rest(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, GO_SCRIPT, extra_env={"INIT_S": "1.5"})
    report, go = anyio.run(standby_run, spec, 0.5)
    assert report.outcome == "ok", report.error
    # The device waited from go until the script was ready, and for nothing before go.
    assert report.startup_s is not None and report.startup_s > 0.5
    assert report.startup_s == pytest.approx(times(report)["ready"] - go, abs=0.1)
    assert 0.5 <= report.standby_s < 0.8


def test_a_fresh_run_records_its_startup(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, GO_SCRIPT, extra_env={"INIT_S": "0.6"})
    report = anyio.run(run_experiment, spec)
    assert report.outcome == "ok", report.error
    assert report.startup_s is not None and 0.6 <= report.startup_s < 3.0
    assert report.standby_s == 0.0
    assert times(report)["waited"] < 0.5  # go was already there when it asked
    metrics = build_result(Origin("a", "t", Device.cpu(0), {}), spec.candidate, report, 1).metrics
    assert metrics["startup_seconds"] == pytest.approx(report.startup_s, abs=0.001)
    assert "standby_seconds" not in metrics


def test_a_script_that_ignores_go_runs_as_before(tmp_path: Path) -> None:
    source = ok_script(0.2)
    assert not opts_in(source)
    report = anyio.run(run_experiment, make_spec(tmp_path, source))
    assert report.outcome == "ok", report.error
    assert report.summary is not None and report.summary.val_bpb is not None
    assert report.startup_s is None


def test_only_a_call_opts_in() -> None:
    assert opts_in(GO_SCRIPT)
    assert opts_in("import autoresearchd.harness.go as go\ngo.wait_for_go()\n")
    # Named in a docstring or comment only, the script would train beside the current run.
    assert not opts_in('"""Calls ``wait_for_go()`` one day."""\n# wait_for_go()\nx = 1\n')
    assert not opts_in("from autoresearchd.harness.go import wait_for_go\n")
    assert not opts_in("wait_for_go(\n")  # a syntax error


def test_wait_for_go_returns_at_once_without_a_daemon() -> None:
    code = "from autoresearchd.harness.go import wait_for_go; print(wait_for_go())"
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_GO_FD"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "0.0"


async def discarded(spec: RunSpec) -> int | None:
    prepare(spec)
    started = await spawn(spec)
    with anyio.fail_after(10):
        assert await started.line.wait_ready(), "the standby never said ready"
    await started.discard(spec)
    return started.process.returncode


def test_a_discarded_standby_exits_without_running(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, GO_SCRIPT)
    returncode = anyio.run(discarded, spec)
    assert returncode == 0  # it left on its own when the socket closed, before any kill
    assert not (spec.run_dir / "times.json").exists()


async def discard_while_starting(spec: RunSpec) -> tuple[float, int | None]:
    prepare(spec)
    started = await spawn(spec, standby=True)
    await anyio.sleep(0.3)  # in its start-up: it will not reach wait_for_go for seconds
    begin = time.monotonic()
    await started.discard(spec)
    return time.monotonic() - begin, started.process.returncode


def test_a_standby_dropped_while_starting_up_ends_at_once(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, GO_SCRIPT, extra_env={"INIT_S": "10"})
    seconds, returncode = anyio.run(discard_while_starting, spec)
    assert returncode is not None
    assert seconds < 0.5  # not STANDBY_EXIT_S waiting for a call it would reach in 10 s


def test_standby_timing_is_learned_on_a_cpu() -> None:
    standby, cpu = Standby(), Device.cpu(0)
    gpu = Device(kind="cuda", index=0, uuid="GPU-1", name="H100", memory_total_mb=81559.0)
    assert standby.delay_s(gpu, 300.0) == 0.0  # a GPU's start-up overlaps the whole run
    assert standby.delay_s(cpu, 20.0) == pytest.approx(20.0 - 0.25)
    fresh = RunReport("r", Path("r"), "ok", None, 0, 0.0, 23.0, 23.0, startup_s=2.0)
    standby.learn(fresh)  # 21 s of run after a 2 s start-up: start 2.65 s before its end
    assert standby.delay_s(cpu, 20.0) == pytest.approx(21.0 - 2.0 * 1.2 - 0.25)


def progress_line(fraction: float) -> bytes:
    line = json.dumps({"fraction": fraction, "loss": 3.0, "step": 1})
    return f"AUTORESEARCH_PROGRESS {line}\n".encode()


async def due_after(standby: Standby, device: Device, feed: list[tuple[float, bytes]]) -> float:
    """Seconds until a successor's standby is due, while ``feed`` arrives as the run's output
    (each chunk that many seconds after the start)."""
    curve, start = LearningCurve(20.0), time.monotonic()
    async with anyio.create_task_group() as tg:

        async def run_output() -> None:
            for at, chunk in feed:
                await anyio.sleep(max(0.0, start + at - time.monotonic()))
                curve.feed(chunk)

        tg.start_soon(run_output)
        with anyio.fail_after(5):
            await standby.wait_until_due(device, 20.0, curve)
        tg.cancel_scope.cancel()
    return time.monotonic() - start


def short_runs() -> Standby:
    """A worker whose runs last 0.3 s: the clock would start a CPU standby at once."""
    standby = Standby()
    standby.learn(RunReport("r", Path("r"), "ok", None, 0, 0.0, 0.3, 0.3, startup_s=0.0))
    assert standby.delay_s(Device.cpu(0), 20.0) < 0.1
    return standby


def test_a_cpu_standby_starts_when_the_run_reports_its_training_done() -> None:
    # On a CPU the cores are the device: a standby beside training slows it (train.py's
    # tokens/s fell 6% beside a standby doing its warm-up), so it waits for evaluation.
    feed = [(0.0, progress_line(0.5)), (0.6, progress_line(1.0))]
    assert 0.5 < anyio.run(due_after, short_runs(), Device.cpu(0), feed) < 1.5


def test_a_cpu_standby_beside_a_silent_script_starts_by_the_clock() -> None:
    assert anyio.run(due_after, short_runs(), Device.cpu(0), []) < 0.5


def test_a_gpu_standby_starts_at_once() -> None:
    gpu = Device(kind="cuda", index=0, uuid="GPU-1", name="H100", memory_total_mb=81559.0)
    assert anyio.run(due_after, Standby(), gpu, [(1.0, progress_line(1.0))]) < 0.5


def test_a_standby_gets_its_go_through_the_sandbox(
    tmp_path: Path,
    tool: str,  # noqa: F811 (the fixture)
) -> None:
    config = config_under(tmp_path)
    sandbox = probe(config)
    assert sandbox.isolation.tool == tool, (sandbox.isolation.fields(), sandbox.degraded)
    spec = spec_for(config, GO_SCRIPT, sandbox, budget=0.5, grace=0.7)
    report, go = anyio.run(standby_run, spec, 1.5)
    assert report.outcome == "ok", report.error + "\n" + report.log_path.read_text()[-1500:]
    assert times(report)["went"] >= go
    assert report.standby_s >= 1.5 and report.startup_s == 0.0


# -- in the daemon ------------------------------------------------------------------------

DAEMON_SCRIPT = """\
import json, os, time
LR = 0.01  # search: log 0.001..0.1
spawned = time.time()
record = os.path.join(os.environ["PIDS_DIR"], str(os.getpid()))
with open(record, "w") as file:
    json.dump({"spawned": spawned}, file)
time.sleep(0.6)  # start-up
from autoresearchd.harness.go import wait_for_go
wait_for_go()
went = time.time()
time.sleep(2.0)  # training and evaluation
cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
with open(record, "w") as file:
    json.dump({"spawned": spawned, "went": went, "cache": cache}, file)
print("---")
print(f"val_bpb: {3.0 + abs(LR - 0.01):.6f}")  # the baseline's is the best: no keeps
"""


def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> tuple[Path, Path]:
    """A workspace holding ``script``, and the folder its runs record their pids in
    (``PIDS_DIR``, outside the run directories: the sandbox must be off)."""
    workspace, pids = tmp_path / "ws", tmp_path / "pids"
    workspace.mkdir()
    pids.mkdir()
    (workspace / "train.py").write_text(script)
    monkeypatch.setenv("PIDS_DIR", str(pids))
    return workspace, pids


async def serve_for(config: Path, seconds: float, nvml: FakeNvml | None = None) -> None:
    daemon = Daemon(config, nvml=nvml)

    async def stop_soon() -> None:
        await anyio.sleep(seconds)
        daemon.drain("test")

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_soon)
        with anyio.fail_after(60):
            assert await daemon.serve() == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_daemon_starts_each_next_run_before_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    prepare_track("synthetic", data)
    workspace, pids = stage(tmp_path, monkeypatch, DAEMON_SCRIPT)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "solo"\nstate_dir = "{tmp_path / "state"}"\n'
        '[devices]\ngpus = "none"\ncpu_workers = 1\n'
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = 0.5\ngrace_s = 5.0\n'
        # The script writes outside its run directory, which the sandbox forbids.
        f'data_dir = "{data}"\nreplicates = 0\nsandbox = "off"\n'
    )
    anyio.run(serve_for, config, 9.0)
    results = stored(tmp_path / "state")
    assert len(results) >= 3, [r.error for r in results]
    first, later = results[0].metrics, [r.metrics for r in results[1:]]
    assert first["startup_seconds"] >= 0.6 and "standby_seconds" not in first
    # From the second run on, the 0.6 s start-up happened while the previous run went on.
    hidden = [m for m in later if m.get("standby_seconds", 0) > 0]
    assert len(hidden) >= len(later) - 1, later
    assert all(m["startup_seconds"] < first["startup_seconds"] / 2 for m in hidden), later
    # Nothing outlives the daemon: runs and the standby it dropped on draining are gone.
    assert not any(alive(int(path.name)) for path in pids.iterdir())
    went = [json.loads(p.read_text()) for p in pids.iterdir()]
    went = [w for w in went if "went" in w]
    assert len(went) == len(results)  # every process that got its go became a result
    # Every run of this device and trust level shares one persistent compile cache.
    cache = tmp_path / "state" / "compile-cache" / "cpu-0" / "params-only" / "inductor"
    assert {w["cache"] for w in went} == {str(cache)}


def stored(state: Path) -> list[Result]:
    """The results a daemon stored in its solo memory under ``state``, oldest first."""

    async def read() -> list[Result]:
        async with SqliteMemory(state / "memory.sqlite") as memory:
            return await memory.results(limit=None)

    return sorted(anyio.run(read), key=lambda r: r.started_at)


async def held_then_changed(spec: RunSpec) -> tuple[bool, bool, int | None]:
    standby, experiment = Standby(), ExperimentConfig()
    key = Key(spec.candidate.sha256, "cpu-0", experiment, sandboxed=False)
    await standby.start(key, spec, seed=3)
    assert standby.run_ids == (spec.run_id,)
    process = standby.held[0].started.process
    # The config changed (a reload): the same candidate's standby no longer matches.
    reloaded = dataclasses.replace(key, experiment=dataclasses.replace(experiment, grace_s=9.0))
    taken = standby.take(reloaded) is not None
    ending = standby.keep_only(reloaded)
    assert ending is not None, "a stale standby was kept"
    let_go = not standby.held  # at once: the next run need not wait for its end
    await ending()
    return taken, let_go, process.returncode


def test_a_standby_whose_config_changed_is_dropped(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, GO_SCRIPT)
    taken, dropped, returncode = anyio.run(held_then_changed, spec)
    assert not taken and dropped
    assert returncode is not None  # its process is gone, not left waiting
    assert not (spec.run_dir / "times.json").exists()


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split(" nice ")[1])


#: Starts a thread and a child process before it waits, so that "every thread" is tested.
THREADED_GO_SCRIPT = """\
import json, os, subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
stop = threading.Event()
worker = threading.Thread(target=stop.wait)
worker.start()
from autoresearchd.harness.go import wait_for_go
wait_for_go()
tasks = [(int(t), os.sched_getscheduler(int(t))) for t in os.listdir("/proc/self/task")]
tasks += [(child.pid, os.sched_getscheduler(child.pid))]
with open("times.json", "w") as file:
    json.dump({"policies": tasks, "nice": os.nice(0)}, file)
stop.set()
child.kill()
print("---")
print("val_bpb: 1.0")
"""


async def yielding_standby(spec: RunSpec) -> tuple[dict[str, Any], RunReport]:
    standby = Standby()
    key = Key(spec.candidate.sha256, "cpu-0", ExperimentConfig(), sandboxed=False)
    await standby.start(key, spec, seed=3)
    held = standby.take(key)
    assert held is not None
    with anyio.fail_after(10):
        assert await held.started.line.wait_ready()
    pid = held.started.process.pid
    threads = group_threads(pid)
    waiting = {
        "nice": niceness(pid),
        "autogroup": autogroup_nice(pid),
        "threads": len(threads),
        "policies": {os.sched_getscheduler(tid) for tid in threads},
    }
    return waiting, await run_experiment(spec, standby=held.started)


def test_a_standby_yields_the_cores_until_its_go(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the daemon gives the priority back only as root"
    spec = make_spec(tmp_path, THREADED_GO_SCRIPT)
    waiting, report = anyio.run(yielding_standby, spec)
    assert report.outcome == "ok", report.error
    # Starting up beside a run, every thread of the script and of its child is idle-only.
    assert waiting["policies"] == {os.SCHED_IDLE} and waiting["threads"] >= 3, waiting
    assert waiting["nice"] == NICENESS and waiting["autogroup"] == AUTOGROUP_NICENESS
    seen: dict[str, Any] = json.loads((report.run_dir / "times.json").read_text())
    # From its go on, all of them run at the usual policy and priority.
    assert {policy for _, policy in seen["policies"]} == {os.SCHED_OTHER}, seen
    assert seen["nice"] == os.getpriority(os.PRIO_PROCESS, 0)  # the daemon's own, given back
