"""The state directory's layout is a contract with the daemon's past: an upgraded daemon
finds the runs, outbox, memory, lock and socket the previous one left, under these names."""

from pathlib import Path

import pytest

from autoresearchd.config_loader import load_config
from autoresearchd.control import socket_path
from autoresearchd.daemon import state_lock
from autoresearchd.errors import ConfigError
from autoresearchd.hub.admin import database_path


def test_a_config_puts_everything_under_its_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    config = load_config(path)
    assert config.run_dir == state / "runs"
    assert config.outbox_dir == state / "outbox"
    assert config.experiment.data_dir == state / "data"
    assert config.memory.path == state / "memory.sqlite"
    assert database_path(config) == state / "hub.sqlite"
    assert socket_path(state) == state / "control.sock"


def test_the_lock_file_keeps_a_second_daemon_off_the_same_state_dir(tmp_path: Path) -> None:
    with state_lock(tmp_path):
        assert (tmp_path / "daemon.lock").is_file()
        with pytest.raises(ConfigError, match="already running"), state_lock(tmp_path):
            pass
