"""Which Python runs train.py, and what it reports about itself outside the sandbox.

``experiment.python`` is resolved to an absolute path, as the probe and every run execute
it (:func:`interpreter_path`), and run once unsandboxed (:func:`identify`): it must import
the harness every train.py uses, and it says which version, prefix and import path it has.
That tells the sandbox what the child must be able to read
(:meth:`Interpreter.code_dirs`), and lets the probe check that the sandbox runs the same
Python the results will record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from autoresearchd.config import Config
from autoresearchd.errors import ConfigError
from autoresearchd.sandbox import scrub_env

#: How long a probe of the host (this interpreter, a sandbox plan, a helper) may take.
PROBE_TIMEOUT_S = 30.0
MAX_LINE_CHARS = 300


def interpreter_path(config: Config) -> str:
    """``experiment.python`` as an absolute path, as the probe and every run execute it."""
    python = config.experiment.python or sys.executable
    found = shutil.which(python)
    if found is None:
        raise ConfigError(
            f"{python} is not an executable file", path=str(config.source), key="experiment.python"
        )
    return os.path.abspath(found)


@dataclass(frozen=True, slots=True)
class Interpreter:
    """What ``experiment.python`` reports about itself when run outside the sandbox."""

    version: str
    prefix: str
    base_prefix: str
    path: tuple[str, ...]

    def code_dirs(self, python: str) -> tuple[Path, ...]:
        """What the child must read: the interpreter's environment and base installation,
        every entry of its import path, each link from ``python`` to the real binary, and
        this package's source tree, which an editable install imports in place."""
        dirs = [Path(self.prefix), Path(self.base_prefix), *map(Path, self.path)]
        dirs += [hop.parent for hop in _link_chain(Path(python))]
        dirs.append(Path(__file__).resolve().parent.parent)
        return tuple(dict.fromkeys(d for d in dirs if d.is_absolute()))


_IDENTIFY = (
    "import json, sys\n"
    "import autoresearchd.harness\n"
    "print(json.dumps([sys.version, sys.prefix, sys.base_prefix, sys.path]))\n"
)


def identify(python: str, config: Config) -> Interpreter:
    """Run ``python`` unsandboxed once; raises :class:`ConfigError` when it cannot import
    the harness that every train.py uses."""
    try:
        done = subprocess.run(
            [python, "-c", _IDENTIFY],
            cwd="/",
            env=scrub_env(os.environ),
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _unusable(python, config, str(exc)) from None
    try:
        version, prefix, base_prefix, path = json.loads(done.stdout)
    except ValueError:
        why = last_line(done.stderr) or f"exit code {done.returncode}"
        raise _unusable(python, config, why) from None
    return Interpreter(version, prefix, base_prefix, tuple(p for p in path if p))


def _unusable(python: str, config: Config, why: str) -> ConfigError:
    return ConfigError(
        f"{python} cannot import autoresearchd.harness: {why} (install autoresearchd into "
        "that environment, or choose another interpreter)",
        path=str(config.source),
        key="experiment.python",
    )


def _link_chain(path: Path) -> Iterator[Path]:
    """``path``, and each symlink hop from it to the real file."""
    for _ in range(40):  # the kernel's own limit on nested links
        yield path
        if not path.is_symlink():
            return
        path = path.parent / os.readlink(path)


def last_line(output: bytes) -> str:
    """The last line a child wrote, cut short, as a one-line error quotes it."""
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1][:MAX_LINE_CHARS] if lines else ""
