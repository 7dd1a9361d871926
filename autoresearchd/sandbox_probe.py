"""Probing the sandbox: which plan really runs a run on this host, found once at start-up.

:func:`open_sandbox` probes what this host allows, best first, and keeps the first
:class:`~autoresearchd.sandbox.Sandbox` plan that really runs what a run runs (the
configured interpreter by absolute path, as the child's uid, importing the harness, reading
the data, writing the run directory and result file, starting ``sys.executable`` again, and
being the same Python the results record): ``bwrap``, else ``unshare``, else nothing. It
also checks which of ``prlimit`` and ``setpriv`` work here. The result is one
``sandbox_ready`` event naming what is in force (and ``degraded``: why a stronger plan
failed). If no plan runs, start-up fails with one line naming the path and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import structlog

from autoresearchd.config import Config
from autoresearchd.errors import ConfigError
from autoresearchd.interpreter import (
    PROBE_TIMEOUT_S,
    Interpreter,
    identify,
    interpreter_path,
    last_line,
)
from autoresearchd.sandbox import (
    DEFAULT_FSIZE_BYTES,
    DEFAULT_NPROC,
    Isolation,
    Sandbox,
    Tool,
    UidRange,
    scrub_env,
)

log = structlog.get_logger(__name__)

#: The fix for a path the sandbox user cannot reach, as start-up errors give it.
REACH_FIX = (
    "let other users read that path and search its parents, e.g. chmod o+rX, or move "
    "daemon.state_dir and experiment.data_dir to where they can"
)
PROBE_NAME = "sandbox_probe.py"
PROBE_RESULT = "result.json"


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
            return last_line(done.stderr) or f"exit code {done.returncode}"
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
