"""What ``run`` will meet on this host, checked before it starts: the paths a config names.

:mod:`autoresearchd.config_loader` reads a file and never touches the host; this is the
step after it, shared by ``check-config`` and ``run``. It looks at what the daemon needs at
start-up and on every run (the workspace and its script, the interpreter, a state
directory it can write, the hub's API key file) and raises one :class:`ConfigError`
naming the config file, the key and what is wrong with the path, instead of a traceback
in the middle of the first run. It only looks: it creates nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from autoresearchd.config import UNSET_PATH, Config
from autoresearchd.errors import ConfigError
from autoresearchd.memory.ensue_client.identity import read_api_key

Check = Callable[[Config], None]


def check_host(config: Config) -> None:
    """Raise :class:`ConfigError` for the first path in ``config`` that ``run`` would trip on."""
    for check in CHECKS:
        check(config)


def _fail(config: Config, key: str, message: str) -> ConfigError:
    return ConfigError(message, path=str(config.source), key=key)


def check_workspace(config: Config) -> None:
    """The workspace is a folder, and the script in it a file the daemon can read."""
    workspace, script = config.experiment.workspace, config.experiment.script
    problem = _problem(workspace, stat.S_ISDIR, "folder")
    if problem:
        raise _fail(config, "experiment.workspace", f"{workspace}: {problem}")
    path = workspace / script
    problem = _problem(path, stat.S_ISREG, "file in the workspace", os.R_OK)
    if problem:
        raise _fail(config, "experiment.script", f"{path}: {problem}")


def check_python(config: Config) -> None:
    """The interpreter is a program this user can run: a path, or a name found on PATH."""
    python = config.experiment.python
    if os.sep not in python:
        if shutil.which(python) is None:
            raise _fail(config, "experiment.python", f"{python}: not found on PATH")
        return
    if not Path(python).is_absolute():  # each run starts in its own folder: it would not resolve
        raise _fail(config, "experiment.python", f"{python}: expected an absolute path")
    problem = _problem(Path(python), stat.S_ISREG, "file", os.X_OK)
    if problem:
        raise _fail(config, "experiment.python", f"{python}: {problem}")


def _problem(path: Path, is_kind: Callable[[int], bool], kind: str, mode: int = 0) -> str:
    """What stops this user from using ``path`` as a ``kind``, or "" when nothing does."""
    try:
        found = path.stat().st_mode
    except FileNotFoundError:
        return f"no such {kind}"
    except OSError as exc:  # a folder above it is private, or a file stands in the way
        return f"cannot be reached by this user ({exc.strerror})"
    if not is_kind(found):
        return f"is not a {kind.split()[0]}"
    if mode and not os.access(path, mode):
        verb = "run" if mode == os.X_OK else "read"
        return f"cannot be {verb} by this user"
    return ""


def check_state_dir(config: Config) -> None:
    """The state folder exists and is writable, or its nearest existing parent is."""
    state = config.daemon.state_dir.absolute()
    try:
        existing, mode = _nearest_existing(state)
    except OSError as exc:
        reason = f"cannot be reached by this user ({exc.strerror})"
        raise _fail(config, "daemon.state_dir", f"{state}: {reason}") from None
    if not stat.S_ISDIR(mode):
        raise _fail(config, "daemon.state_dir", f"{state}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == state else f"cannot be created in {existing}"
        raise _fail(
            config,
            "daemon.state_dir",
            f"{state}: {what} by this user (pick a folder it owns, or run as its owner)",
        )


def _nearest_existing(path: Path) -> tuple[Path, int]:
    """``path`` or its closest existing parent, with its mode; OSError if it is out of reach."""
    for candidate in (path, *path.parents):
        try:
            return candidate, candidate.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet; a file in the way is found as a parent
    raise FileNotFoundError(errno.ENOENT, "no folder above it exists", str(path))


def check_api_key_file(config: Config) -> None:
    """A network memory needs its org and a readable key file with mode 0600."""
    memory = config.memory
    if memory.backend != "ensue":
        return
    if not memory.org:
        raise _fail(config, "memory.org", 'expected a value when backend = "ensue"')
    key_file = memory.api_key_file
    if key_file == UNSET_PATH:
        raise _fail(config, "memory.api_key_file", 'expected a value when backend = "ensue"')
    if not key_file.exists():
        raise _fail(
            config,
            "memory.api_key_file",
            f"{key_file}: no such file (autoresearchd register writes it)",
        )
    try:
        read_api_key(key_file)
    except ConfigError as exc:
        raise _fail(config, "memory.api_key_file", f"{key_file}: {_reason(exc)}") from None


def _reason(exc: ConfigError) -> str:
    """``exc``'s message without the ``path: key:`` prefix it was built with."""
    where = ": ".join(part for part in (exc.path, exc.key) if part)
    return str(exc).removeprefix(f"{where}: ") if where else str(exc)


#: In the order a user fixes things: what to run, what runs it, where it keeps state.
CHECKS: tuple[Check, ...] = (check_workspace, check_python, check_state_dir, check_api_key_file)
