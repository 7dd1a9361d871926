"""benchmarks/gpu_check.py: its CPU dry run writes the report a GPU run would, step by step."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ["install", "gpus", "train", "profile", "train_large", "etiquette", "daemon"]


def gpu_check(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("out")
    done = gpu_check("--dry-run", "--out", str(out), timeout=280)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.returncode, report, out


@pytest.fixture(scope="module")
def module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # its dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_reports_every_step_and_skips_only_what_needs_a_gpu(
    dry_run: tuple[int, dict[str, Any], Path],
) -> None:
    _, report, out = dry_run
    assert report["dry_run"] is True and list(report["steps"]) == STEPS
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    assert statuses == {**dict.fromkeys(STEPS, "ok"), "etiquette": "skipped_no_gpu"}
    assert all(step.get("seconds", 0) >= 0 for step in report["steps"].values())
    summary = (out / "summary.txt").read_text(encoding="utf-8").splitlines()
    assert "dry run" in summary[0] and len(summary) == 1 + len(STEPS)
    assert summary[1 + STEPS.index("etiquette")] == "etiquette: skipped_no_gpu"
    assert {"report.json", "summary.txt", "train.log", "daemon.log", "profile.txt"} <= {
        p.name for p in out.iterdir()
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_install_and_gpus(dry_run: tuple[int, dict[str, Any], Path]) -> None:
    steps = dry_run[1]["steps"]
    install = steps["install"]
    assert install["reused_torch"] is True and install["torch"].startswith("2.")
    assert install["installed"] == []  # the test's interpreter already holds everything
    gpus = steps["gpus"]
    assert gpus["gpu_count"] == 0 and [d["kind"] for d in gpus["devices"]] == ["cpu"]
    (fake,) = gpus["fake_nvml_devices"]
    assert (fake["name"], fake["tier"], fake["memory_gb"]) == ("NVIDIA H100 80GB HBM3", "xl", 80.0)
    assert fake["uuid"].startswith("GPU-") and fake["memory_total_mb"] == 80 * 1024
    assert (gpus["driver_version"], gpus["cuda_version"]) == ("550.54", "12.4")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_trains_both_shapes_and_reports_their_figures(
    dry_run: tuple[int, dict[str, Any], Path],
) -> None:
    steps = dry_run[1]["steps"]
    train, large = steps["train"], steps["train_large"]
    for record in (train, large):
        assert record["device"] == "cpu" and math.isfinite(record["val_bpb"])
        assert record["tokens_per_s"] > 0 and record["training_seconds"] >= 2.0
        assert 0 < record["compile_seconds"] <= record["warmup_seconds"]
        assert record["mfu_percent"] == 0.0 and record["peak_tflops"] == 0.0  # no CPU peak
        assert 0 < record["training_share"] < 1 and record["outside_script_seconds"] > 0
        assert record["wall_seconds"] > record["total_seconds"] >= record["training_seconds"]
    assert train["changes"] == {} and large["changes"] == {"CPU_DEPTH": 3}
    assert (train["depth"], large["depth"]) == (2, 3)
    assert large["num_params_M"] > train["num_params_M"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_profiles_the_default_shape(dry_run: tuple[int, dict[str, Any], Path]) -> None:
    profile = dry_run[1]["steps"]["profile"]
    assert profile["steps"] == 3 and 1 <= len(profile["top"]) <= 10
    shares = [entry["share"] for entry in profile["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    assert all(entry["calls"] >= 1 and entry["name"] for entry in profile["top"])
    table = (dry_run[2] / "profile.txt").read_text(encoding="utf-8")
    assert "Self CPU" in table and profile["top"][0]["name"][:20] in table


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_daemon_ran_kept_busy_and_left_nothing(
    dry_run: tuple[int, dict[str, Any], Path],
) -> None:
    daemon = dry_run[1]["steps"]["daemon"]
    assert daemon["outcomes"].get("ok", 0) >= 1 and daemon["results"] >= 1
    assert daemon["runs_started"] >= daemon["runs_finished"] >= daemon["results"]
    assert 0.5 < daemon["busy_fraction"] <= 1.0
    assert len(daemon["per_run"]) == daemon["results"]
    for run in daemon["per_run"]:
        assert 0 < run["training_share"] < 1 and run["training_seconds"] >= 1.0
    share = daemon["training_share"]
    assert share["min"] <= share["median"] <= share["max"] < 1
    assert daemon["leftover_processes"] == [] and daemon["gpu_processes_after"] is None
    assert daemon["sandbox"] is not None


def test_out_of_time_steps_are_reported_not_run(tmp_path: Path) -> None:
    done = gpu_check("--dry-run", "--out", str(tmp_path), "--max-seconds", "5", timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    statuses = [step["status"] for step in report["steps"].values()]
    assert statuses == ["skipped_out_of_time"] + ["skipped_install_failed"] * 6


def test_a_bad_shape_is_a_one_line_error(tmp_path: Path) -> None:
    done = gpu_check("--out", str(tmp_path), "--large", "DEPTH=12,ASPECT", timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("--large: expected NAME=number, got 'ASPECT'")
    assert not (tmp_path / "report.json").exists()


def started(run_id: str, at: str) -> dict[str, Any]:
    return {"event": "run_started", "run_id": run_id, "timestamp": f"2026-01-01T00:{at}Z"}


def exited(run_id: str, at: str, outcome: str, duration_s: float) -> dict[str, Any]:
    return {
        "event": "run_process_exited",
        "run_id": run_id,
        "outcome": outcome,
        "duration_s": duration_s,
        "timestamp": f"2026-01-01T00:{at}Z",
    }


def test_busy_fraction_and_gaps_come_from_the_daemons_log(
    module: ModuleType, tmp_path: Path
) -> None:
    """Two runs of 10 s with 1 s between them, then a third cut short by the stop."""
    log = tmp_path / "daemon.log"
    lines = [
        started("a", "00:00"),
        exited("a", "00:10", "ok", 10.0),
        started("b", "00:11"),
        exited("b", "00:21", "crash", 10.0),
        started("c", "00:22"),
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    log.write_text(text + '\nnot json\n{"event": "half a line', encoding="utf-8")
    watch = module.LogWatch(log)
    stop = module.event_time(lines[0]) + 30.0
    results = [{"status": "discard", "duration_s": 10.0, "metrics": {"training_seconds": 8.0}}]
    record = module.daemon_record(watch, results, stop)
    assert record["runs_started"] == 3 and record["runs_finished"] == 2
    assert record["outcomes"] == {"ok": 1, "crash": 1}
    assert record["busy_fraction"] == round(28 / 30, 4)
    assert record["gap_seconds"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert record["training_share"]["median"] == pytest.approx(0.8)


def test_a_standby_counts_from_its_go_not_its_spawn(module: ModuleType, tmp_path: Path) -> None:
    """b is spawned at 5 s while a runs to 10 s, and goes at 11 s: the device was busy 20 of
    the 21 s, not 26."""
    log = tmp_path / "daemon.log"
    lines = [
        started("a", "00:00"),
        started("b", "00:05"),
        exited("a", "00:10", "ok", 10.0),
        exited("b", "00:21", "ok", 10.0),
    ]
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    watch = module.LogWatch(log)
    record = module.daemon_record(watch, [], module.event_time(lines[0]) + 21.0)
    assert record["runs_started"] == 2 and record["runs_finished"] == 2
    assert record["busy_fraction"] == round(20 / 21, 4)
    assert record["gap_seconds"] == {"min": 1.0, "median": 1.0, "max": 1.0}


def test_shape_changes_parse_or_name_the_bad_part(module: ModuleType) -> None:
    assert module.parse_changes("DEPTH=12, ASPECT_RATIO=128,") == {
        "DEPTH": 12,
        "ASPECT_RATIO": 128,
    }
    assert module.parse_changes("MATRIX_LR=0.01") == {"MATRIX_LR": 0.01}
    with pytest.raises(ValueError, match="expected NAME=number, got '12=DEPTH'"):
        module.parse_changes("12=DEPTH")
