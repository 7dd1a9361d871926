"""The experiment sandbox: how each run is wrapped so a train.py cannot reach the network,
the disk or the host.

A :class:`Sandbox` is a plan that :mod:`autoresearchd.sandbox_probe` found to work on this
host: ``bwrap`` (read-only root, the run directory and a private tmp writable, the state
directory and key files hidden, its own network, IPC, UTS and PID namespaces, the GPU nodes
bound in), else ``unshare`` (the same namespaces, and a mount namespace made by ``sh`` and
mount(8) with a private tmp and the state hidden), else nothing. What the child sees of the
filesystem is planned in :mod:`autoresearchd.sandbox_layout`, which also makes folders the
child cannot search (a 0700 home) work. ``prlimit`` caps tasks, file size and core dumps;
``setpriv`` sets no-new-privileges. When the daemon is root, the child also runs under an
unprivileged uid of its own per worker and per daemon (:class:`UidRange`), because
RLIMIT_NPROC counts tasks per uid and root is exempt from it: that is what bounds a fork
bomb. Each run is wrapped by small C binaries (no extra Python process) through
:attr:`RunSpec.wrap`, so the spawn stays close to a bare Python start. The child's
environment loses every variable whose name suggests a secret (:func:`scrub_env`).
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from autoresearchd.compile_cache import give_to
from autoresearchd.errors import ConfigError
from autoresearchd.sandbox_layout import Mount, bwrap_args, mount_script, plan_mounts

log = structlog.get_logger(__name__)

#: Tasks (processes and threads) a child's uid may hold; torch wants a few threads per core.
DEFAULT_NPROC = 1024
#: The largest file a child may write.
DEFAULT_FSIZE_BYTES = 64 * 2**30
#: When the daemon is root, a worker's children run under a uid no account uses, one per
#: worker and daemon (:class:`UidRange`), so one fork bomb cannot starve other threads.
SANDBOX_UID_BASE = 0x70000000
UIDS_PER_INSTANCE = 256
UID_INSTANCES = 4096
#: Where daemons on one host claim their uid blocks (root only: only root changes uid).
UID_LOCK_DIR = Path("/run/autoresearchd/sandbox-uids")
GPU_NODES = "/dev/nvidia*"
#: The runner's log file in the run directory (``run_spec.LOG_NAME``).
LOG_NAME = "run.log"
#: Environment names that may hold credentials; they never reach a child.
SECRET_ENV = re.compile(
    r"^AUTORESEARCHD_|(API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE
)

Tool = Literal["bwrap", "unshare", "none"]
Filesystem = Literal["read-only", "uid-permissions", "none"]
#: Turns ``[python, script]`` into the command actually run (``run_spec.Wrap``).
Wrap = Callable[[Sequence[str]], list[str]]


#: Errors that say the host, not the script, is at fault: the configured paths or the
#: sandbox's tools are out of reach, or the interpreter cannot start or import.
ENVIRONMENT_ERRORS = re.compile(
    r"Permission denied|\[Errno 13\]|can't open file|^cannot start |^exit code 12[67]\b|"
    r"\b(?:bwrap|setpriv|prlimit|unshare|mount|sh): |ModuleNotFoundError|"
    r"No module named|error while loading shared libraries",
)


def environment_failure(error: str) -> bool:
    """Whether a run's one-line ``error`` blames the host rather than the script."""
    return bool(ENVIRONMENT_ERRORS.search(error))


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


class UidRange:
    """This daemon's own block of sandbox uids, held through a lock file for its lifetime.

    Each daemon on a host claims the lowest free instance number under
    :data:`UID_LOCK_DIR`, so two daemons never hand the same uid to their children, and one
    daemon's fork bomb cannot eat another's process limit. Slots (one per worker) get the
    instance's uids in the order they are first asked for.
    """

    def __init__(self, instance: int, fd: int) -> None:
        self.instance = instance
        self._slots: dict[int, int] = {}
        weakref.finalize(self, os.close, fd)  # the lock lasts as long as this object

    @classmethod
    def claim(cls, lock_dir: Path = UID_LOCK_DIR) -> UidRange:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for instance in range(UID_INSTANCES):
            fd = os.open(lock_dir / f"uids-{instance}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(instance, fd)
        raise ConfigError(f"all {UID_INSTANCES} sandbox uid blocks are taken", path=str(lock_dir))

    def uid(self, slot: int | None) -> int:
        """The uid for ``slot``; None is the start-up probe's own."""
        first = SANDBOX_UID_BASE + self.instance * UIDS_PER_INSTANCE
        if slot is None:
            return first + UIDS_PER_INSTANCE - 1
        index = self._slots.setdefault(slot, len(self._slots))
        return first + index % (UIDS_PER_INSTANCE - 1)


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
    uids: UidRange | None = None
    #: Why a stronger plan was not taken (its probe's error), empty when none was refused.
    degraded: str = field(default="", kw_only=True)

    def uid(self, slot: int | None) -> int | None:
        if not self.isolation.own_uid or self.uids is None:
            return None
        return self.uids.uid(slot)

    def wrapper(self, run_dir: Path, slot: int | None = 0, writable: Sequence[Path] = ()) -> Wrap:
        """The wrap for one run in ``run_dir``; ``slot`` picks the worker's uid. The run may
        also write in ``writable`` (existing directories, e.g. its compile cache)."""
        run_dir = run_dir.absolute()
        uid = self.uid(slot)
        extra = tuple(path.absolute() for path in writable)

        def wrap(command: Sequence[str]) -> list[str]:
            if uid is not None:
                # Runs after the run directory is filled and before the child starts.
                _chown_tree(run_dir, uid)
                for path in extra:
                    give_to(path, uid)
            return [
                *self._limits(),
                *self._namespaces(run_dir, uid, extra),
                *self._privileges(uid),
                *command,
            ]

        return wrap

    def mounts(self, run_dir: Path, uid: int | None, writable: Sequence[Path] = ()) -> list[Mount]:
        """What the child sees of the filesystem (:mod:`autoresearchd.sandbox_layout`)."""
        return plan_mounts(
            run_dir=run_dir,
            readable=self.readable_dirs,
            hidden_dirs=self.hidden_dirs,
            hidden_files=self.hidden_files,
            uid=uid,
            writable=writable,
        )

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

    def _namespaces(
        self, run_dir: Path, uid: int | None, writable: Sequence[Path] = ()
    ) -> list[str]:
        if self.isolation.tool == "bwrap":
            return self._bwrap(run_dir, uid, writable)
        if self.isolation.tool == "unshare":
            return self._unshare(run_dir, uid, writable)
        return []

    def _bwrap(self, run_dir: Path, uid: int | None, writable: Sequence[Path] = ()) -> list[str]:
        iso = self.isolation
        argv = [self.binaries["bwrap"], "--die-with-parent", "--unshare-net", "--unshare-ipc"]
        argv += ["--unshare-uts", "--ro-bind", "/", "/", "--dev", "/dev"]
        if iso.pid_namespace:
            argv += ["--unshare-pid", "--proc", "/proc"]
        for node in sorted(glob.glob(GPU_NODES)):
            argv += ["--dev-bind", node, node]
        argv += bwrap_args(self.mounts(run_dir, uid, writable))
        argv += ["--chdir", str(run_dir)]
        # The daemon's home may be unreadable to the child's uid, or hidden with the state.
        argv += ["--setenv", "HOME", "/tmp"]
        if os.geteuid() == 0 and not iso.own_uid:
            argv += ["--cap-drop", "ALL"]
        return [*argv, "--"]

    def _unshare(self, run_dir: Path, uid: int | None, writable: Sequence[Path] = ()) -> list[str]:
        """Namespaces, and a mount namespace made by ``sh`` and mount(8) as bwrap would."""
        argv = [self.binaries["unshare"], "--mount", "--net", "--ipc", "--uts"]
        if os.geteuid() != 0:
            # Root in a user namespace may mount; outside it, it is still the daemon's user.
            argv += ["--user", "--map-root-user"]
        if self.isolation.pid_namespace:
            argv += ["--pid", "--fork", "--kill-child", "--mount-proc"]
        steps = self.mounts(run_dir, uid, writable)
        bins = self.binaries
        script = mount_script(steps, bins["mount"], bins["mkdir"], chdir=run_dir)
        return [*argv, "--", self.binaries["sh"], "-c", script, "sh"]

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
