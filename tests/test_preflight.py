"""check-config and run fail alike, with one line, on the paths run would trip on.

Each case is a config that parses but names a path the daemon cannot use. Both commands
run as real processes: ``check-config`` must refuse it, and ``run`` must exit 2 at once
with the same line instead of starting workers that fail on every run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoresearchd.sandbox_layout import unreachable_tops

from .daemon_process import ROOT, cli

NOBODY = 65534


def write_config(where: Path, **sections: dict[str, str]) -> Path:
    """A config whose workspace and state dir are fine unless ``sections`` say otherwise."""
    workspace = where / "ws"
    workspace.mkdir(exist_ok=True)
    (workspace / "train.py").write_text("print('---')\nprint('val_bpb: 1.0')\n")
    tables: dict[str, dict[str, str]] = {
        "daemon": {"state_dir": f'"{where / "state"}"'},
        "devices": {"gpus": '"none"', "cpu_workers": "1"},
        "experiment": {"workspace": f'"{workspace}"', "sandbox": '"off"'},
    }
    for name, values in sections.items():
        tables.setdefault(name, {}).update(values)
    lines = []
    for name, values in tables.items():
        lines += [f"[{name}]", *(f"{key} = {value}" for key, value in values.items())]
    path = where / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def refusal(path: Path, line: str) -> list[str]:
    return [f"autoresearchd: {path}: {line}"]


def assert_both_refuse(config: Path, line: str) -> None:
    checked = cli("check-config", config)
    assert (checked.returncode, checked.stderr.splitlines()) == (2, refusal(config, line))
    ran = cli("run", "--config", config)
    assert (ran.returncode, ran.stderr.splitlines()) == (2, refusal(config, line))


def test_a_good_config_passes(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    checked = cli("check-config", config)
    assert (checked.returncode, checked.stdout) == (0, f"{config}: ok\n"), checked.stderr


def test_a_missing_workspace(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    config = write_config(tmp_path, experiment={"workspace": f'"{gone}"'})
    assert_both_refuse(config, f"experiment.workspace: {gone}: no such folder")


def test_a_workspace_without_its_script(tmp_path: Path) -> None:
    config = write_config(tmp_path, experiment={"script": '"nope.py"'})
    script = tmp_path / "ws" / "nope.py"
    assert_both_refuse(config, f"experiment.script: {script}: no such file in the workspace")


def test_an_interpreter_that_does_not_exist(tmp_path: Path) -> None:
    config = write_config(tmp_path, experiment={"python": '"/nonexistent/python"'})
    assert_both_refuse(config, "experiment.python: /nonexistent/python: no such file")


def test_an_interpreter_name_not_on_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, experiment={"python": '"python-that-is-not-there"'})
    assert_both_refuse(config, "experiment.python: python-that-is-not-there: not found on PATH")


def test_a_relative_interpreter_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, experiment={"python": '"venv/bin/python"'})
    assert_both_refuse(config, "experiment.python: venv/bin/python: expected an absolute path")


def test_a_state_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    state = tmp_path / "taken" / "state"
    config = write_config(tmp_path, daemon={"state_dir": f'"{state}"'})
    assert_both_refuse(config, f"daemon.state_dir: {state}: {tmp_path / 'taken'} is not a folder")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder any user can read, outside pytest's private (mode 0700) temporary root."""
    path = Path(tempfile.mkdtemp(prefix="autoresearchd-preflight-"))
    path.chmod(0o755)
    yield path
    for folder in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)  # the tests lock folders even against their owner
    shutil.rmtree(path)


def as_unprivileged(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``autoresearchd ARGS`` as a user without root's licence to write anywhere."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = [*_reachable_code(), "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
        prefix.append("--clear-groups")
    return subprocess.run(
        [*prefix, sys.executable, "-m", "autoresearchd", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HOME": "/tmp"},
        timeout=60,
        check=False,
    )


def _reachable_code() -> list[str]:
    """A bwrap prefix that lets the unprivileged user reach this checkout and its interpreter.

    A clone under a 0700 home (``/root``) is out of that user's reach, and these tests are about
    the paths in the config, not the code's own. Each unreachable top gets an empty traversable
    tmpfs with only the code bound back; the rest of the filesystem is the host's.
    """
    needed = [ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve()]
    tops = unreachable_tops(needed, NOBODY)
    if not tops:
        return []
    assert shutil.which("bwrap"), "bwrap is needed to run these checks from a private home"
    prefix = ["bwrap", "--dev-bind", "/", "/"]
    for top in tops:
        prefix += ["--tmpfs", str(top)]
        for path in needed:
            if path.is_relative_to(top) and path != top:
                kept = path if path.is_dir() else path.parent
                prefix += ["--ro-bind", str(kept), str(kept)]
    return prefix


#: A program any user may run: these checks are about other paths, and this user may not
#: reach the interpreter running the tests.
ANY_PROGRAM = '"/bin/sh"'


def test_a_state_dir_this_user_cannot_create(shared_dir: Path) -> None:
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o555)
    state = locked / "state"
    config = write_config(
        shared_dir, daemon={"state_dir": f'"{state}"'}, experiment={"python": ANY_PROGRAM}
    )
    line = (
        f"daemon.state_dir: {state}: cannot be created in {locked} by this user "
        "(pick a folder it owns, or run as its owner)"
    )
    for args in (("check-config", config), ("run", "--config", config)):
        done = as_unprivileged(*args)
        assert (done.returncode, done.stderr.splitlines()) == (2, refusal(config, line))


def test_a_missing_api_key_file(tmp_path: Path) -> None:
    key = tmp_path / "hub.key"
    memory = {
        "backend": '"ensue"',
        "url": '"http://127.0.0.1:9/"',
        "org": '"lab"',
        "api_key_file": f'"{key}"',
    }
    config = write_config(tmp_path, memory=memory)
    line = f"memory.api_key_file: {key}: no such file (autoresearchd register writes it)"
    assert_both_refuse(config, line)


def test_an_api_key_file_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "hub.key"
    key.write_text("secret\n")
    key.chmod(0o644)
    memory = {
        "backend": '"ensue"',
        "url": '"http://127.0.0.1:9/"',
        "org": '"lab"',
        "api_key_file": f'"{key}"',
    }
    config = write_config(tmp_path, memory=memory)
    line = f"memory.api_key_file: {key}: mode 0644 is too open; run chmod 600 on it"
    assert_both_refuse(config, line)


def test_an_interpreter_in_a_folder_this_user_cannot_enter(shared_dir: Path) -> None:
    """A venv under a private home: the daemon's user cannot even see its python."""
    private = shared_dir / "private"
    (private / "bin").mkdir(parents=True)
    python = private / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    private.chmod(0o000)
    config = write_config(shared_dir, experiment={"python": f'"{python}"'})
    line = f"experiment.python: {python}: cannot be reached by this user (Permission denied)"
    for args in (("check-config", config), ("run", "--config", config)):
        done = as_unprivileged(*args)
        assert (done.returncode, done.stderr.splitlines()) == (2, refusal(config, line))


def test_a_state_dir_inside_a_folder_this_user_cannot_enter(shared_dir: Path) -> None:
    private = shared_dir / "private"
    private.mkdir(mode=0o000)
    state = private / "state"
    config = write_config(
        shared_dir, daemon={"state_dir": f'"{state}"'}, experiment={"python": ANY_PROGRAM}
    )
    line = f"daemon.state_dir: {state}: cannot be reached by this user (Permission denied)"
    for args in (("check-config", config), ("run", "--config", config)):
        done = as_unprivileged(*args)
        assert (done.returncode, done.stderr.splitlines()) == (2, refusal(config, line))
