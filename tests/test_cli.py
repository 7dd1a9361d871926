"""The CLI as a user runs it: exit codes, one-line errors, JSON that parses."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon_process import cli

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "check-config" in result.stdout and "gpus" in result.stdout


def test_check_config_accepts_the_example() -> None:
    result = cli("check-config", "config.example.toml")
    assert result.returncode == 0, result.stderr


def test_check_config_rejects_bad_gpus_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[devices]\ngpus = 3.5\n")
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'autoresearchd: {path}: devices.gpus: expected "auto", "none" '
        "or a list of indices/UUIDs, got 3.5"
    ]


def test_check_config_rejects_misspelt_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[experiment]\ntime_budgt_s = 5\n")
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert "experiment.time_budgt_s: unknown key (did you mean time_budget_s?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_gpus_json_is_valid_on_a_gpu_less_machine() -> None:
    result = cli("gpus", "--json", "--config", "config.example.toml")
    assert result.returncode == 0, result.stderr
    devices = json.loads(result.stdout)
    assert isinstance(devices, list)
    for device in devices:
        assert {
            "index",
            "uuid",
            "name",
            "pci_bus_id",
            "memory_total_mb",
            "memory_free_mb",
            "tier",
            "temperature_c",
            "utilization_pct",
            "processes",
        } <= device.keys()


def test_gpus_table_prints() -> None:
    result = cli("gpus")
    assert result.returncode == 0
    assert result.stdout.startswith(("INDEX", "no devices"))


@pytest.mark.parametrize(
    "args",
    [
        ["check-config", "config.example.toml"],
        ["results", "--config", "config.example.toml"],
        ["best", "--config", "config.example.toml", "--json"],
    ],
)
def test_a_reader_that_leaves_early_gets_no_traceback(args: list[str]) -> None:
    """``autoresearchd ... | head -1``: the pipe closes before we write; we exit quietly,
    with the status of a program killed by SIGPIPE."""
    with subprocess.Popen(
        [sys.executable, "-m", "autoresearchd", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # before the child has imported anything, let alone printed
        stderr = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
    assert (code, stderr) == (141, "")
