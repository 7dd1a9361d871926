"""Commands run without ``--config`` find one, say which, or say where they looked.

The search order is ``$AUTORESEARCHD_CONFIG``, then the system config, then the user's
config folder. The processes run as a user runs them, with a home and environment of
the test's own; the system file is left alone, so these runs must not find one there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearchd.config_loader import CONFIG_ENV, SYSTEM_CONFIG, config_search_path

from .daemon_process import ROOT


@pytest.fixture(autouse=True)
def no_system_config() -> None:
    assert not SYSTEM_CONFIG.exists(), f"{SYSTEM_CONFIG} exists on this machine: it would win"


def autoresearchd(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``autoresearchd ARGS`` with HOME at ``tmp_path/home`` and only ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k not in (CONFIG_ENV, "XDG_CONFIG_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "autoresearchd", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, "HOME": str(tmp_path / "home"), **env},
        timeout=60,
        check=False,
    )


def write_config(path: Path, track: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[daemon]\nstate_dir = "state"\n[experiment]\ntrack = "{track}"\n')
    return path


def test_the_environment_variable_names_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "elsewhere.toml", "from-env")
    write_config(tmp_path / "home" / ".config" / "autoresearchd" / "config.toml", "from-home")
    done = autoresearchd(tmp_path, "results", **{CONFIG_ENV: str(config)})
    assert (done.returncode, done.stdout) == (0, "no results yet for track from-env\n")
    assert done.stderr == f"autoresearchd: config {config} (from ${CONFIG_ENV})\n"


def test_the_users_config_folder_is_found(tmp_path: Path) -> None:
    config = write_config(tmp_path / "home" / ".config" / "autoresearchd" / "config.toml", "mine")
    done = autoresearchd(tmp_path, "best")
    assert (done.returncode, done.stdout) == (0, "no best yet for track mine\n")
    assert done.stderr == f"autoresearchd: config {config} (from the user's config folder)\n"


def test_xdg_config_home_moves_the_users_config_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path / "xdg" / "autoresearchd" / "config.toml", "xdg")
    write_config(tmp_path / "home" / ".config" / "autoresearchd" / "config.toml", "home")
    done = autoresearchd(tmp_path, "check-config", XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    assert (done.returncode, done.stdout) == (0, f"{config}: ok\n"), done.stderr
    assert done.stderr == f"autoresearchd: config {config} (from $XDG_CONFIG_HOME)\n"


def test_no_config_anywhere_is_one_line_naming_where_to_put_one(tmp_path: Path) -> None:
    done = autoresearchd(tmp_path, "status")
    user = tmp_path / "home" / ".config" / "autoresearchd" / "config.toml"
    assert (done.returncode, done.stderr.splitlines()) == (
        2,
        [
            f"autoresearchd: no readable config file: pass --config PATH, set ${CONFIG_ENV},"
            f" or create {SYSTEM_CONFIG} or {user}"
        ],
    )


def test_an_environment_variable_naming_no_file_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path / "home" / ".config" / "autoresearchd" / "config.toml", "home")
    missing = tmp_path / "missing.toml"
    done = autoresearchd(tmp_path, "results", **{CONFIG_ENV: str(missing)})
    assert (done.returncode, done.stderr.splitlines()) == (
        2,
        [f"autoresearchd: {missing}: ${CONFIG_ENV} names no readable file"],
    )


def test_the_search_order_puts_the_system_config_before_the_users() -> None:
    system = Path("/etc/x/config.toml")
    home = {"HOME": "/home/ada"}
    assert config_search_path(home, system=system) == [
        (system, "the system config"),
        (Path("/home/ada/.config/autoresearchd/config.toml"), "the user's config folder"),
    ]
    relative_xdg = {**home, "XDG_CONFIG_HOME": "relative/dir"}  # ignored, as the spec says
    assert config_search_path(relative_xdg, system=system)[1][1] == "the user's config folder"
    assert config_search_path({**home, CONFIG_ENV: "~/c.toml"}, system=system) == [
        (Path.home() / "c.toml", f"${CONFIG_ENV}")
    ]
