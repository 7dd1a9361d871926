"""SIGHUP reload: a valid file applies live settings; identity and track wait for a restart."""

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.daemon import Daemon


def daemon_with(tmp_path: Path, text: str) -> tuple[Daemon, Path]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    daemon = Daemon(path)
    return daemon, path


@pytest.mark.anyio
async def test_reload_applies_the_budget_but_keeps_agent_and_track(tmp_path: Path) -> None:
    daemon, path = daemon_with(tmp_path, '[daemon]\nagent = "alice"\n')
    path.write_text(
        '[daemon]\nagent = "bob"\n[experiment]\ntrack = "shakespeare"\ntime_budget_s = 42.0\n'
    )
    with capture_logs() as logs:
        applied = await daemon.reload()
    assert daemon.config.experiment.time_budget_s == 42.0
    assert daemon.config.daemon.agent == "alice"
    assert daemon.config.experiment.track == "synthetic"
    assert applied is daemon.config, "the workers get the config now running"
    waiting = [e for e in logs if e["event"] == "config_restart_needed"]
    assert waiting[0]["keys"] == ["daemon.agent", "experiment.track"]


@pytest.mark.anyio
async def test_an_invalid_file_keeps_the_running_config(tmp_path: Path) -> None:
    daemon, path = daemon_with(tmp_path, "[experiment]\ntime_budget_s = 30.0\n")
    running = daemon.config
    path.write_text("[experiment]\ntime_budgt_s = 42.0\n")
    with capture_logs() as logs:
        applied = await daemon.reload()
    assert daemon.config is running and applied is running
    failed = [e for e in logs if e["event"] == "config_reload_failed"]
    assert "time_budgt_s" in failed[0]["error"]
