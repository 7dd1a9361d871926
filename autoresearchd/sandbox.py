"""The experiment sandbox: what stops a train.py from reaching the network, the disk or the host.

At start-up :func:`open_sandbox` probes what this host allows, best first, and keeps the first
plan that really runs what a run runs (the configured interpreter by absolute path, as the
child's uid, importing the harness, reading the data, writing the run directory and result
file, starting ``sys.executable`` again, and being the same Python the results record):
``bwrap`` (read-only root, the run directory and a private tmp writable, the state directory
and key files hidden, its own network, IPC, UTS and PID namespaces, the GPU nodes bound in),
else ``unshare`` (the same namespaces, and a mount namespace made by ``sh`` and mount(8) with a
private tmp and the state hidden), else nothing. What the child sees of the filesystem is
planned in :mod:`autoresearchd.sandbox_layout`, which also makes folders the child cannot
search (a 0700 home) work. ``prlimit`` caps tasks, file size and core dumps; ``setpriv`` sets
no-new-privileges. When the daemon is root, the child also runs under an unprivileged uid of
its own per worker and per daemon (:class:`UidRange`), because RLIMIT_NPROC counts tasks per uid
and root is exempt from it: that is what bounds a fork bomb. The result is one
``sandbox_ready`` event naming what is in force (and ``degraded``: why a stronger plan failed).
If no plan runs, start-up fails with one line naming the path and the fix. Each run is then
wrapped by small C binaries (no extra Python process) through :attr:`RunSpec.wrap`, so the
spawn stays close to a bare Python start.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

from autoresearchd.compile_cache import give_to
from autoresearchd.config import Config
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
PROBE_TIMEOUT_S = 30.0
#: The fix for a path the sandbox user cannot reach, as start-up errors give it.
REACH_FIX = (
    "let other users read that path and search its parents, e.g. chmod o+rX, or move "
    "daemon.state_dir and experiment.data_dir to where they can"
)
PROBE_NAME = "sandbox_probe.py"
PROBE_RESULT = "result.json"
MAX_LINE_CHARS = 300
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
    fields = sandbox.isolation.fields()
    degraded = {"degraded": sandbox.degraded} if sandbox.degraded else {}
    event("sandbox_ready", **fields, mode=experiment.sandbox, missing=missing, **degraded)
    if missing and (experiment.sandbox == "required" or experiment.trust == "sandboxed"):
        # Unchecked network code runs only in a complete sandbox.
        why = '"required"' if experiment.sandbox == "required" else 'trust = "sandboxed"'
        raise ConfigError(
            f"{why} but {_gap(sandbox, missing)}", path=str(config.source), key="experiment.sandbox"
        )
    return sandbox


def _gap(sandbox: Sandbox, missing: list[str]) -> str:
    """Why the sandbox falls short, and the fix, in one line."""
    if sandbox.degraded:
        # A stronger plan exists here; what it could not reach is the thing to fix.
        return f"the sandbox user cannot run here: {sandbox.degraded} ({REACH_FIX})"
    return (
        f"this host lacks: {', '.join(missing)} (install bubblewrap, run as root or allow "
        'user namespaces, or set sandbox = "auto")'
    )


def probe(
    config: Config, *, nproc: int = DEFAULT_NPROC, fsize_bytes: int = DEFAULT_FSIZE_BYTES
) -> Sandbox:
    """The best plan that runs ``experiment.python`` here, under these limits.

    Raises :class:`ConfigError` when no plan can run what a real run runs, naming the path
    and the fix: every run would crash the same way.
    """
    run_root = config.run_dir
    run_root.mkdir(parents=True, exist_ok=True)  # before the state directory is looked up
    python = interpreter_path(config)
    found = identify(python, config)
    binaries = find_tools()
    base = Sandbox(
        Isolation(),
        binaries=binaries,
        hidden_dirs=_existing(config.daemon.state_dir),
        hidden_files=_secret_files(config),
        readable_dirs=_existing(config.experiment.data_dir, *found.code_dirs(python)),
        uids=UidRange.claim() if os.geteuid() == 0 and "setpriv" in binaries else None,
        nproc=nproc,
        fsize_bytes=fsize_bytes,
    )
    base = replace(base, isolation=_helpers(base))
    refused = ""
    for plan in _plans(base):
        error = _try(plan, python, config, found)
        if error is None:
            return replace(plan, degraded=refused)
        log.debug("sandbox_plan_failed", **plan.isolation.fields(), error=error)
        refused = refused or error
    raise ConfigError(
        f"no sandbox plan can run {python} here, so every run would fail: {refused} "
        f'({REACH_FIX}, or set experiment.sandbox = "off")',
        path=str(config.source),
        key="experiment.sandbox",
    )


_TOOLS = ("bwrap", "unshare", "prlimit", "setpriv", "mount", "mkdir", "sh")


def find_tools() -> dict[str, str]:
    """The sandbox's helper binaries on PATH, by real path: a link could lie under a
    directory the sandbox masks (a private /tmp, say)."""
    return {name: os.path.realpath(path) for name in _TOOLS if (path := shutil.which(name))}


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
        why = _last_line(done.stderr) or f"exit code {done.returncode}"
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


def _existing(*paths: Path) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(p.absolute() for p in paths if p != Path() and p.exists()))


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
    """Candidate plans, strongest first; the last one wraps nothing at all."""
    iso, bins = base.isolation, base.binaries
    own_uid = (True, False) if base.uids is not None else (False,)
    tools: list[Tool] = [t for t in ("bwrap", "unshare") if t in bins]
    if "unshare" in tools and not {"mount", "mkdir", "sh"} <= bins.keys():
        tools.remove("unshare")  # its mount namespace is made by sh and mount(8)
    for tool in tools:
        for pid in (True, False):
            for uid in own_uid:
                nnp = iso.no_new_privs or tool == "bwrap"
                plan = replace(iso, tool=tool, network=True, pid_namespace=pid, own_uid=uid)
                yield replace(base, isolation=replace(plan, no_new_privs=nnp))
    for uid in own_uid:
        yield replace(base, isolation=replace(iso, own_uid=uid))
    yield replace(base, isolation=Isolation())


#: What the probe runs, as a real run runs train.py: a file in a run directory, by the
#: configured interpreter, importing the harness, reading the data and writing the result.
PROBE_SCRIPT = """\
import json, os, subprocess, sys
import autoresearchd.harness
if "--data" in sys.argv:
    os.listdir(os.environ["AUTORESEARCH_DATA_DIR"])
with open("probe-written", "w") as file:
    file.write("ok")
subprocess.run([sys.executable, "-c", "pass"], check=True)
with open(os.environ["AUTORESEARCH_RESULT_FILE"], "w") as file:
    json.dump([sys.version, sys.prefix, sys.base_prefix], file)
"""


def _try(plan: Sandbox, python: str, config: Config, found: Interpreter) -> str | None:
    """None when ``plan`` runs the probe script as a run would, else why not."""
    with tempfile.TemporaryDirectory(prefix=".sandbox-probe-", dir=config.run_dir) as tmp:
        run_dir = Path(tmp)
        (run_dir / PROBE_NAME).write_text(PROBE_SCRIPT, encoding="utf-8")
        result = run_dir / PROBE_RESULT
        data = config.experiment.data_dir.absolute()
        env = {
            **scrub_env(os.environ),
            "AUTORESEARCH_DATA_DIR": str(data),
            "AUTORESEARCH_RESULT_FILE": str(result),
        }
        command = [python, PROBE_NAME, *(["--data"] if data.is_dir() else [])]
        argv = plan.wrapper(run_dir, None)(command)
        try:
            done = subprocess.run(
                argv, cwd=run_dir, env=env, capture_output=True, timeout=PROBE_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return _last_line(done.stderr) or f"exit code {done.returncode}"
        return _same_interpreter(result, found)


def _same_interpreter(result: Path, found: Interpreter) -> str | None:
    try:
        version, prefix, base_prefix = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"the probe wrote no readable {result.name}: {exc}"
    if (version, prefix, base_prefix) != (found.version, found.prefix, found.base_prefix):
        first = version.split()[0]
        return (
            f"the sandbox ran Python {first} from {base_prefix}, not "
            f"{found.version.split()[0]} from {found.base_prefix}"
        )
    return None


def _last_line(output: bytes) -> str:
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1][:MAX_LINE_CHARS] if lines else ""
