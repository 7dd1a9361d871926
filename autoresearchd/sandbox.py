"""The experiment sandbox: what stops a train.py from reaching the network, the disk or the host.

At start-up :func:`open_sandbox` probes what this host allows, best first, and keeps the first
plan that really runs Python: ``bwrap`` (read-only root, the run directory and a private tmp
writable, the state directory and key files hidden, its own network, IPC, UTS and PID
namespaces, the GPU nodes bound in), else ``unshare`` (namespaces only), else nothing.
``prlimit`` caps tasks, file size and core dumps; ``setpriv`` sets no-new-privileges. When the
daemon is root, the child also runs under a dedicated unprivileged uid per worker, because
RLIMIT_NPROC counts tasks per uid and root is exempt from it: that is what bounds a fork bomb.
The result is one ``sandbox_ready`` event naming what is in force. Each run is then wrapped
by small C binaries (no extra Python process) through :attr:`RunSpec.wrap`, so the spawn stays
close to a bare Python start.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from autoresearchd.config import Config
from autoresearchd.errors import ConfigError

log = structlog.get_logger(__name__)

#: Tasks (processes and threads) a child's uid may hold; torch wants a few threads per core.
DEFAULT_NPROC = 1024
#: The largest file a child may write.
DEFAULT_FSIZE_BYTES = 64 * 2**30
#: When the daemon is root, a worker's children run as ``SANDBOX_UID_BASE + slot``: a uid no
#: account uses, one per worker, so one worker's fork bomb cannot starve another's threads.
SANDBOX_UID_BASE = 0x70000000
UID_SLOTS = 65536
PROBE_TIMEOUT_S = 30.0
PROBE_FILE = "sandbox-probe"
GPU_NODES = "/dev/nvidia*"
#: The runner's log file in the run directory (``runner.LOG_NAME``).
LOG_NAME = "run.log"
#: Environment names that may hold credentials; they never reach a child.
SECRET_ENV = re.compile(
    r"^AUTORESEARCHD_|(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE
)

Tool = Literal["bwrap", "unshare", "none"]
Filesystem = Literal["read-only", "uid-permissions", "none"]
#: Turns ``[python, script]`` into the command actually run (``runner.Wrap``).
Wrap = Callable[[Sequence[str]], list[str]]


def scrub_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the variables whose names suggest a secret."""
    return {name: value for name, value in env.items() if not SECRET_ENV.search(name)}


@dataclass(frozen=True, slots=True)
class Isolation:
    """What a sandbox plan enforces; :meth:`fields` is what ``sandbox_ready`` logs."""

    tool: Tool = "none"
    network: bool = False
    pid_namespace: bool = False
    own_uid: bool = False
    rlimits: bool = False
    no_new_privs: bool = False

    @property
    def filesystem(self) -> Filesystem:
        if self.tool == "bwrap":
            return "read-only"
        return "uid-permissions" if self.own_uid else "none"

    @property
    def processes_bounded(self) -> bool:
        """RLIMIT_NPROC binds only a uid other than root."""
        return self.rlimits and (self.own_uid or os.geteuid() != 0)

    def missing(self) -> list[str]:
        """The isolation ``sandbox = "required"`` asks for and this plan lacks."""
        wanted = {
            "network namespace": self.network,
            "read-only filesystem": self.filesystem == "read-only",
            "no_new_privs": self.no_new_privs,
            "rlimits": self.rlimits,
            "bounded processes": self.processes_bounded,
        }
        return [name for name, held in wanted.items() if not held]

    def fields(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "network": "isolated" if self.network else "host",
            "filesystem": self.filesystem,
            "no_new_privs": self.no_new_privs,
            "rlimits": self.rlimits,
            "pid_namespace": self.pid_namespace,
            "own_uid": self.own_uid,
            "processes_bounded": self.processes_bounded,
        }


@dataclass(frozen=True, slots=True)
class Sandbox:
    """A probed plan plus the paths it hides; :meth:`wrapper` makes each run's ``RunSpec.wrap``."""

    isolation: Isolation
    binaries: Mapping[str, str] = field(default_factory=dict)
    hidden_dirs: tuple[Path, ...] = ()
    hidden_files: tuple[Path, ...] = ()
    readable_dirs: tuple[Path, ...] = ()
    nproc: int = DEFAULT_NPROC
    fsize_bytes: int = DEFAULT_FSIZE_BYTES

    def uid(self, slot: int) -> int | None:
        return SANDBOX_UID_BASE + slot % UID_SLOTS if self.isolation.own_uid else None

    def wrapper(self, run_dir: Path, slot: int = 0) -> Wrap:
        """The wrap for one run in ``run_dir``; ``slot`` picks the worker's uid."""
        run_dir = run_dir.absolute()
        uid = self.uid(slot)

        def wrap(command: Sequence[str]) -> list[str]:
            if uid is not None:
                # Runs after the run directory is filled and before the child starts.
                _chown_tree(run_dir, uid)
            return [
                *self._limits(),
                *self._namespaces(run_dir),
                *self._privileges(uid),
                *command,
            ]

        return wrap

    def _limits(self) -> list[str]:
        if not self.isolation.rlimits:
            return []
        return [
            self.binaries["prlimit"],
            f"--nproc={self.nproc}",
            f"--fsize={self.fsize_bytes}",
            "--core=0",
            "--",
        ]

    def _namespaces(self, run_dir: Path) -> list[str]:
        if self.isolation.tool == "bwrap":
            return self._bwrap(run_dir)
        if self.isolation.tool == "unshare":
            return self._unshare()
        return []

    def _bwrap(self, run_dir: Path) -> list[str]:
        iso = self.isolation
        argv = [self.binaries["bwrap"], "--die-with-parent", "--unshare-net", "--unshare-ipc"]
        argv += ["--unshare-uts", "--ro-bind", "/", "/", "--dev", "/dev"]
        if iso.pid_namespace:
            argv += ["--unshare-pid", "--proc", "/proc"]
        for node in sorted(glob.glob(GPU_NODES)):
            argv += ["--dev-bind", node, node]
        argv += ["--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm"]
        for hidden in self.hidden_dirs:
            argv += ["--tmpfs", str(hidden)]
        for secret in self.hidden_files:
            argv += ["--ro-bind", "/dev/null", str(secret)]
        for readable in self.readable_dirs:
            argv += [*self._parents(readable), "--ro-bind", str(readable), str(readable)]
        argv += [*self._parents(run_dir), "--bind", str(run_dir), str(run_dir)]
        argv += ["--chdir", str(run_dir)]
        # The daemon's home may be unreadable to the child's uid, or hidden with the state.
        argv += ["--setenv", "HOME", "/tmp"]
        if os.geteuid() == 0 and not iso.own_uid:
            argv += ["--cap-drop", "ALL"]
        return [*argv, "--"]

    def _parents(self, path: Path) -> list[str]:
        """Traversable mount points above ``path`` inside a fresh tmpfs (bwrap makes them 0700)."""
        tmpfs = (Path("/tmp"), *self.hidden_dirs)
        argv: list[str] = []
        for parent in reversed(path.parents):
            if any(parent != top and parent.is_relative_to(top) for top in tmpfs):
                argv += ["--perms", "0755", "--dir", str(parent)]
        return argv

    def _unshare(self) -> list[str]:
        argv = [self.binaries["unshare"], "--net", "--ipc", "--uts"]
        if os.geteuid() != 0:
            argv += ["--user", "--map-current-user"]
        if self.isolation.pid_namespace:
            argv += ["--pid", "--fork", "--kill-child"]
        return [*argv, "--"]

    def _privileges(self, uid: int | None) -> list[str]:
        if uid is not None:
            return [
                self.binaries["setpriv"],
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        if self.isolation.no_new_privs and self.isolation.tool != "bwrap":
            return [self.binaries["setpriv"], "--no-new-privs", "--"]
        return []  # bwrap sets no_new_privs itself


def _chown_tree(root: Path, uid: int) -> None:
    """Give the run directory to the child's uid; ``run.log`` stays the daemon's own."""
    try:
        os.chown(root, uid, uid, follow_symlinks=False)
        for parent, dirs, files in os.walk(root):
            for name in (*dirs, *files):
                if name != LOG_NAME or parent != str(root):
                    os.chown(os.path.join(parent, name), uid, uid, follow_symlinks=False)
    except OSError as exc:
        # The child then fails on its first write, with a readable error in its log.
        log.warning("sandbox_chown_failed", run_dir=str(root), error=str(exc))


# -- probing -----------------------------------------------------------------------------


def open_sandbox(config: Config) -> Sandbox | None:
    """The sandbox ``experiment.sandbox`` asks for, probed on this host, or None when off.

    Raises :class:`ConfigError` when full isolation is not available but ``"required"``, or
    ``trust = "sandboxed"`` (which runs unchecked network code).
    """
    experiment = config.experiment
    if experiment.trust == "any":
        log.warning(
            "trust_check_disabled",
            trust="any",
            risk="scripts from the network run unchecked",
            sandbox=experiment.sandbox,
        )
    if experiment.sandbox == "off":
        log.warning("sandbox_ready", **Isolation().fields(), mode="off")
        return None
    sandbox = probe(config)
    missing = sandbox.isolation.missing()
    event = log.warning if missing else log.info
    event("sandbox_ready", **sandbox.isolation.fields(), mode=experiment.sandbox, missing=missing)
    if missing and (experiment.sandbox == "required" or experiment.trust == "sandboxed"):
        # Unchecked network code runs only in a complete sandbox.
        why = '"required"' if experiment.sandbox == "required" else 'trust = "sandboxed"'
        raise ConfigError(
            f"{why} but this host lacks: {', '.join(missing)} (install bubblewrap, run as "
            'root or allow user namespaces, or set sandbox = "auto")',
            path=str(config.source),
            key="experiment.sandbox",
        )
    return sandbox


def probe(config: Config, **limits: int) -> Sandbox:
    """The best plan that runs ``experiment.python`` here; ``limits`` override nproc/fsize."""
    run_root = config.run_dir
    run_root.mkdir(parents=True, exist_ok=True)  # before the state directory is looked up
    binaries = {name: path for name in _TOOLS if (path := shutil.which(name))}
    base = Sandbox(
        Isolation(),
        binaries=binaries,
        hidden_dirs=_existing(config.daemon.state_dir),
        hidden_files=_secret_files(config),
        readable_dirs=_existing(config.experiment.data_dir),
        **limits,
    )
    base = replace(base, isolation=_helpers(base))
    for plan in _plans(base):
        error = _try(plan, config.experiment.python, run_root)
        if error is None:
            return plan
        log.debug("sandbox_plan_failed", **plan.isolation.fields(), error=error)
    return replace(base, isolation=replace(base.isolation, rlimits=False, no_new_privs=False))


_TOOLS = ("bwrap", "unshare", "prlimit", "setpriv")


def _existing(*paths: Path) -> tuple[Path, ...]:
    return tuple(p.absolute() for p in paths if p != Path() and p.exists())


def _secret_files(config: Config) -> tuple[Path, ...]:
    key = config.memory.api_key_file
    state = config.daemon.state_dir.absolute()
    if key == Path() or not key.is_file() or key.absolute().is_relative_to(state):
        return ()  # a key inside the state directory is hidden with it
    return (key.absolute(),)


def _helpers(base: Sandbox) -> Isolation:
    """Which of prlimit and setpriv work here (a seccomp filter may forbid them)."""
    bins = base.binaries
    rlimits = "prlimit" in bins and _runs([bins["prlimit"], "--core=0", "--", "true"])
    nnp = "setpriv" in bins and _runs([bins["setpriv"], "--no-new-privs", "--", "true"])
    return replace(base.isolation, rlimits=rlimits, no_new_privs=nnp)


def _runs(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _plans(base: Sandbox) -> Iterator[Sandbox]:
    """Candidate plans, strongest first."""
    iso, bins = base.isolation, base.binaries
    own_uid = (True, False) if os.geteuid() == 0 and "setpriv" in bins else (False,)
    for tool in ("bwrap", "unshare"):
        if tool not in bins:
            continue
        for pid in (True, False):
            for uid in own_uid:
                nnp = iso.no_new_privs or tool == "bwrap"
                plan = replace(iso, tool=tool, network=True, pid_namespace=pid, own_uid=uid)
                yield replace(base, isolation=replace(plan, no_new_privs=nnp))
    for uid in own_uid:
        yield replace(base, isolation=replace(iso, own_uid=uid))


def _try(plan: Sandbox, python: str, run_root: Path) -> str | None:
    """None when ``plan`` runs Python that can write its run directory, else why not."""
    with tempfile.TemporaryDirectory(prefix=".sandbox-probe-", dir=run_root) as tmp:
        run_dir = Path(tmp)
        code = f"open({PROBE_FILE!r}, 'w').write('ok')"
        argv = plan.wrapper(run_dir)([python, "-c", code])
        try:
            done = subprocess.run(
                argv,
                cwd=run_dir,
                env=scrub_env(os.environ),
                capture_output=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        wrote = (run_dir / PROBE_FILE).is_file()
        if done.returncode == 0 and wrote:
            return None
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {done.returncode}"
