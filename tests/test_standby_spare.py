"""The speculation's standby on a GPU: a second slot, its memory rule, and a daemon whose run
after a keep starts from a standby.

The daemon serves one fake GPU (:class:`~autoresearchd.testing.FakeNvml`) on a stand-in that
waits for go after its start-up and scores below every run before it, so each run is kept
(``replicates = 0``) and the run after a keep is the speculation made beside it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import pytest

from autoresearchd.config import ExperimentConfig
from autoresearchd.models import Device, Result, Status
from autoresearchd.standby import SLOTS, SPARE_HEADROOM, Key, Standby, room_for_spare
from autoresearchd.testing import FakeNvml

from .test_runner import make_spec
from .test_standby import GO_SCRIPT, alive, serve_for, stage, stored


def gpu(free_gb: float, total_gb: float = 80.0) -> Device:
    return Device(
        kind="cuda",
        index=0,
        uuid="GPU-0",
        name="H100",
        memory_total_mb=total_gb * 1024,
        memory_free_mb=free_gb * 1024,
    )


def test_a_spare_fits_only_with_headroom_beyond_what_the_first_standby_took() -> None:
    # The first standby (and the run's growth) took 10 GB: another 10 GB leaves 30 of 80 free.
    assert room_for_spare(gpu(50.0), gpu(40.0))
    # 10 GB went, 18 are left: a second 10 GB would leave 8, under the headroom of 8 GB + ...
    headroom_gb = SPARE_HEADROOM * 80.0
    assert not room_for_spare(gpu(28.0), gpu(18.0 - 1e-3 + headroom_gb - 8.0))
    assert room_for_spare(gpu(28.0), gpu(18.0 + headroom_gb - 8.0))
    # Memory freed meanwhile is no credit, and an unreadable total is no room.
    assert room_for_spare(gpu(10.0), gpu(30.0))
    assert not room_for_spare(gpu(0.0, total_gb=0.0), gpu(0.0, total_gb=0.0))


async def two_held_then_one_runs(tmp_path: Path) -> tuple[list[int | None], bool, bool]:
    standby, experiment = Standby(), ExperimentConfig()
    specs = [make_spec(tmp_path / f"s{n}", GO_SCRIPT) for n in range(SLOTS + 1)]
    keys = [
        Key(s.candidate.sha256 + str(n), "GPU-0", experiment, False) for n, s in enumerate(specs)
    ]
    for key, spec in zip(keys, specs, strict=True):
        await standby.start(key, spec, seed=3)
    full = len(standby.held) == SLOTS  # the last start found no free slot
    processes = [h.started.process for h in standby.held]
    with anyio.fail_after(10):
        assert await standby.wait_ready()
    ending = standby.keep_only(keys[1])  # the speculation runs next: the other one goes
    assert ending is not None
    await ending()
    kept = standby.take(keys[1])
    assert kept is not None and not standby.held
    await kept.started.discard(kept.spec)
    return [p.returncode for p in processes], full, kept.key == keys[1]


def test_two_standbys_are_held_and_the_one_not_next_is_ended(tmp_path: Path) -> None:
    returncodes, full, kept = anyio.run(two_held_then_one_runs, tmp_path)
    assert full and kept
    assert all(code is not None for code in returncodes)  # none left waiting


#: Start-up, then go; a score below every run before it (a count of runs that went), so every
#: run is kept. The counter lives outside the run directories (the sandbox is off).
KEEP_SCRIPT = """\
import json, os, time
LR = 0.01  # search: log 0.001..0.1
WIDTH = 64  # search: int 16..256
spawned = time.time()
time.sleep(0.6)  # start-up: imports, data, the device's context
from autoresearchd.harness.go import wait_for_go
wait_for_go()
went = time.time()
folder = os.environ["PIDS_DIR"]
done = len(os.listdir(folder))
with open(os.path.join(folder, str(os.getpid())), "w") as file:
    json.dump({"spawned": spawned, "went": went}, file)
time.sleep(2.5)  # training and evaluation
print("---")
print(f"val_bpb: {3.0 - 0.01 * done:.6f}")
"""


def serve_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, used_gb: float) -> list[Result]:
    workspace, pids = stage(tmp_path, monkeypatch, KEEP_SCRIPT)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "solo"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[experiment]\nworkspace = "{workspace}"\ntime_budget_s = 5.0\ngrace_s = 5.0\n'
        'replicates = 0\nsandbox = "off"\n'
    )
    nvml = FakeNvml.with_gpus(1)
    nvml.gpus[0].used_gb = used_gb
    anyio.run(serve_for, config, 14.0, nvml)
    assert not any(alive(int(path.name)) for path in pids.iterdir())
    return stored(tmp_path / "state")


def after_keeps(results: list[Result]) -> list[Result]:
    """The runs whose parent is the run just before them, kept: speculations taken. (The
    baseline gets none: the candidate prepared beside it already builds on it.)"""
    return [
        b
        for a, b in itertools.pairwise(results)
        if a.status is Status.KEEP
        and a.parent_sha256 is not None
        and b.parent_sha256 == a.train_py_sha256
    ]


def test_on_a_gpu_the_run_after_a_keep_starts_from_its_standby(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = serve_gpu(tmp_path, monkeypatch, used_gb=0.0)
    taken = after_keeps(results)
    assert len(taken) >= 2, [(r.status, r.description) for r in results]
    for result in taken:
        # Started beside the kept run: its 0.6 s start-up was off the device's time.
        assert result.metrics.get("standby_seconds", 0.0) > 0, result.metrics
        assert result.metrics["startup_seconds"] < 0.3, result.metrics


def test_no_spare_standby_on_a_gpu_short_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free_gb = SPARE_HEADROOM * 80.0 - 1.0  # under the headroom a second standby must leave
    results = serve_gpu(tmp_path, monkeypatch, used_gb=80.0 - free_gb)
    taken = after_keeps(results)
    assert len(taken) >= 2, [(r.status, r.description) for r in results]
    for result in taken:
        assert "standby_seconds" not in result.metrics, result.metrics
        assert result.metrics["startup_seconds"] >= 0.6, result.metrics
