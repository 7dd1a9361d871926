"""The systemd units verify cleanly and stay at or below their exposure goal."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "systemd").glob("*.service"))
INSTALLED_BINARY = "/opt/autoresearchd/bin/autoresearchd"
EXPOSURE_GOAL = 3.0


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run must install Debian's systemd package")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def local_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with its install path pointed at this checkout's binary (verify checks it)."""
    binary = Path(sys.executable).parent / "autoresearchd"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_BINARY, str(binary)))
    return copy


def test_there_is_a_daemon_unit() -> None:
    assert ROOT / "systemd" / "autoresearchd.service" in UNITS


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(local_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_exposure_is_within_goal(unit: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"{unit.name}: exposure {exposure}")
    assert exposure <= EXPOSURE_GOAL


def test_daemon_unit_keeps_required_settings() -> None:
    text = (ROOT / "systemd" / "autoresearchd.service").read_text()
    for line in (
        "Type=notify",
        "KillMode=mixed",
        "Restart=on-failure",
        "DynamicUser=yes",
        "DeviceAllow=/dev/nvidiactl rw",
        "DeviceAllow=/dev/nvidia-uvm rw",
        "DeviceAllow=/dev/nvidia-uvm-tools rw",
        "ConfigurationDirectory=autoresearchd",
    ):
        assert line in text.splitlines(), line
    assert "PrivateDevices=yes" not in text
    stop = int(re.search(r"^TimeoutStopSec=(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    assert stop > 60 + 30  # default shutdown_grace_s plus the outbox flush
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
