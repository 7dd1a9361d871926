"""The sandbox with real scripts through the runner: no network, no writes outside the run
directory, no secrets, no new privileges, a bounded fork bomb, and the real train.py still runs.

These tests need the isolation they check: on a host without it they fail and say what is
missing (``scripts/install-system-deps`` installs bubblewrap), they are never skipped.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoresearchd.config import Config
from autoresearchd.config_loader import parse_config
from autoresearchd.errors import ConfigError
from autoresearchd.models import Candidate, Device
from autoresearchd.run_spec import RunSpec
from autoresearchd.runner import RunReport, run_experiment
from autoresearchd.sandbox import Isolation, Sandbox, scrub_env
from autoresearchd.sandbox_probe import open_sandbox, probe

ROOT = Path(__file__).resolve().parent.parent
#: The fork-bomb test's task allowance: small, so the bound is reached within a second.
BOMB_NPROC = 32
#: A bomb that escaped its limit still stops forking here, so the test cannot hurt the host.
BOMB_SELF_CAP = 300


def summary_script(body: str) -> str:
    """A script that runs ``body`` (which sets ``metrics``) and prints them as a summary."""
    return (
        "import os, sys\nmetrics = {}\n"
        + body
        + '\nprint("---")\nprint("val_bpb: 1.0")\n'
        + 'for key, value in metrics.items():\n    print(f"{key}: {value}")\n'
    )


@pytest.fixture
def config(tmp_path: Path) -> Config:
    state = tmp_path / "state"
    (state / "runs").mkdir(parents=True)
    (state / "memory.sqlite").write_text("the collective memory")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tokens.bin").write_text("data")
    (tmp_path / "api.key").write_text("secret-key")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "train.py").write_text("print('baseline')\n")
    raw = {
        "daemon": {"state_dir": str(state), "agent": "tester"},
        "experiment": {"workspace": str(workspace), "data_dir": str(tmp_path / "data")},
        "memory": {"api_key_file": str(tmp_path / "api.key")},
    }
    return parse_config(raw, source=tmp_path / "config.toml")


@pytest.fixture
def sandbox(config: Config) -> Sandbox:
    return probe(config)


def spec_for(
    config: Config,
    source: str,
    sandbox: Sandbox | None,
    *,
    budget: float = 20.0,
    grace: float = 0.5,
    slot: int = 0,
    env: dict[str, str] | None = None,
) -> RunSpec:
    spec = RunSpec.from_config(
        config.experiment,
        run_root=config.run_dir,
        run_id=f"run-{uuid.uuid4().hex[:8]}",
        candidate=Candidate(source=source, parent_sha256=None, description="test"),
        device=Device.cpu(0),
        seed=1,
    )
    spec = dataclasses.replace(
        spec, time_budget_s=budget, grace_s=grace, kill_grace_s=1.0, extra_env=env or {}
    )
    if sandbox is None:
        return spec
    return dataclasses.replace(spec, wrap=sandbox.wrapper(spec.run_dir, slot))


def run(spec: RunSpec) -> RunReport:
    return anyio.run(run_experiment, spec)


def metric(report: RunReport, name: str) -> float:
    assert report.summary is not None, f"no summary: {report.error}"
    return report.summary.metrics[name]


# -- what this host gives ------------------------------------------------------------


def test_auto_reaches_full_isolation_on_this_host(sandbox: Sandbox) -> None:
    """CI must provide bubblewrap and root (or user namespaces): a gap fails here, by name."""
    missing = sandbox.isolation.missing()
    assert missing == [], (
        f"sandbox isolation unavailable on this host, missing: {missing} "
        f"(plan {sandbox.isolation.fields()}); install bubblewrap "
        "(scripts/install-system-deps does)"
    )
    assert sandbox.isolation.tool == "bwrap"


def test_sandbox_ready_names_what_is_in_force(config: Config) -> None:
    with capture_logs() as logs:
        sandbox = open_sandbox(config)
    assert sandbox is not None
    ready = [e for e in logs if e["event"] == "sandbox_ready"]
    assert len(ready) == 1
    for key in ("tool", "network", "filesystem", "no_new_privs", "rlimits", "missing"):
        assert key in ready[0], key
    assert ready[0]["network"] == "isolated"


def test_off_wraps_nothing_and_says_so(config: Config, tmp_path: Path) -> None:
    raw = {"daemon": {"state_dir": str(tmp_path / "s")}, "experiment": {"sandbox": "off"}}
    with capture_logs() as logs:
        assert open_sandbox(parse_config(raw, source=tmp_path / "c.toml")) is None
    assert [e["tool"] for e in logs if e["event"] == "sandbox_ready"] == ["none"]


def test_required_fails_at_start_when_tools_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {"daemon": {"state_dir": str(tmp_path / "s")}, "experiment": {"sandbox": "required"}}
    config = parse_config(raw, source=tmp_path / "c.toml")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap, unshare, prlimit, setpriv
    with pytest.raises(ConfigError, match=r'experiment\.sandbox: "required" but .*network'):
        open_sandbox(config)


def test_trust_sandboxed_refuses_an_incomplete_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {"daemon": {"state_dir": str(tmp_path / "s")}, "experiment": {"trust": "sandboxed"}}
    config = parse_config(raw, source=tmp_path / "c.toml")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r'trust = "sandboxed" but this host lacks'):
        open_sandbox(config)


def test_trust_any_warns_loudly_at_start(tmp_path: Path) -> None:
    raw = {"daemon": {"state_dir": str(tmp_path / "s")}, "experiment": {"trust": "any"}}
    with capture_logs() as logs:
        open_sandbox(parse_config(raw, source=tmp_path / "c.toml"))
    warned = [e for e in logs if e["event"] == "trust_check_disabled"]
    assert warned and warned[0]["log_level"] == "warning"


def test_missing_lists_each_gap() -> None:
    assert "network namespace" in Isolation().missing()
    full = Isolation("bwrap", True, True, True, True, True)
    assert full.missing() == []


def test_scrub_env_drops_secret_names_only() -> None:
    env = {"AUTORESEARCHD_KEY": "x", "HF_TOKEN": "y", "OPENAI_API_KEY": "z", "PATH": "/bin"}
    assert scrub_env(env) == {"PATH": "/bin"}


# -- containment, with real scripts --------------------------------------------------

NETWORK_SCRIPT = summary_script("""
import socket
try:
    socket.create_connection(("127.0.0.1", int(os.environ["PROBE_PORT"])), timeout=2).close()
    metrics["connected"] = 1
except OSError:
    metrics["connected"] = 0
""")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    yield server
    server.close()


def accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


def test_child_cannot_reach_a_listener_on_host_loopback(
    config: Config, sandbox: Sandbox, listener: socket.socket
) -> None:
    port = {"PROBE_PORT": str(listener.getsockname()[1])}
    report = run(spec_for(config, NETWORK_SCRIPT, sandbox, env=port))
    assert report.outcome == "ok", report.error
    assert metric(report, "connected") == 0
    assert not accepted(listener)
    # The same script unsandboxed does connect: the check above can fail.
    report = run(spec_for(config, NETWORK_SCRIPT, None, env=port))
    assert metric(report, "connected") == 1
    assert accepted(listener)


WRITE_SCRIPT = summary_script("""
import tempfile
escaped = 0
for target in os.environ["OUTSIDE"].split(os.pathsep):
    try:
        with open(target, "w") as file:
            file.write("escaped")
        escaped += 1
    except OSError:
        pass
metrics["escaped"] = escaped
open("inside.txt", "w").write("mine")
with tempfile.NamedTemporaryFile(dir="/tmp") as scratch:
    scratch.write(b"scratch")
metrics["inside"] = 1
""")


def test_writes_outside_the_run_directory_fail(config: Config, sandbox: Sandbox) -> None:
    tag = uuid.uuid4().hex[:8]
    outside = [
        ROOT / f"escape-{tag}.txt",  # visible and, to root, writable without the sandbox
        Path(sys.prefix) / f"escape-{tag}.txt",
        config.experiment.workspace / f"escape-{tag}.txt",
        config.daemon.state_dir / f"escape-{tag}.txt",
        config.experiment.data_dir / f"escape-{tag}.txt",
    ]
    env = {"OUTSIDE": os.pathsep.join(map(str, outside))}
    try:
        report = run(spec_for(config, WRITE_SCRIPT, sandbox, env=env))
        assert report.outcome == "ok", report.error
        assert metric(report, "inside") == 1
        assert (report.run_dir / "inside.txt").read_text() == "mine"
        assert metric(report, "escaped") == 0
        assert [p for p in outside if p.exists()] == []
    finally:
        for path in outside:
            path.unlink(missing_ok=True)


PRIVILEGE_SCRIPT = summary_script("""
status = open("/proc/self/status").read()
metrics["no_new_privs"] = int(status.split("NoNewPrivs:")[1].split()[0])
metrics["uid"] = os.getuid()
metrics["secret_env"] = sum(name in os.environ for name in ("AUTORESEARCHD_TOKEN", "MY_API_KEY"))
readable = 0
for secret in os.environ["SECRETS"].split(os.pathsep):
    try:
        readable += "secret" in open(secret).read() or "memory" in open(secret).read()
    except OSError:
        pass
metrics["secrets_read"] = readable
data = os.path.join(os.environ["AUTORESEARCH_DATA_DIR"], "tokens.bin")
metrics["data_read"] = int(open(data).read() == "data")
import resource
metrics["core_limit"] = resource.getrlimit(resource.RLIMIT_CORE)[0]
metrics["nproc_limit"] = resource.getrlimit(resource.RLIMIT_NPROC)[0]
""")


def test_child_gets_no_privileges_and_no_secrets(
    config: Config, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCHD_TOKEN", "secret")
    monkeypatch.setenv("MY_API_KEY", "secret")
    secrets = [config.memory.api_key_file, config.daemon.state_dir / "memory.sqlite"]
    env = {"SECRETS": os.pathsep.join(map(str, secrets))}
    report = run(spec_for(config, PRIVILEGE_SCRIPT, sandbox, slot=7, env=env))
    assert report.outcome == "ok", report.error
    assert metric(report, "no_new_privs") == 1
    assert metric(report, "secret_env") == 0
    assert metric(report, "secrets_read") == 0
    assert metric(report, "data_read") == 1
    assert metric(report, "core_limit") == 0
    assert metric(report, "nproc_limit") == sandbox.nproc
    if os.geteuid() == 0:
        assert metric(report, "uid") == sandbox.uid(7)


BOMB_SCRIPT = summary_script(f"""
import time
deadline = time.time() + 2.0
while time.time() < deadline and os.path.getsize("forks") < {BOMB_SELF_CAP}:
    try:
        pid = os.fork()
    except OSError:
        with open("refused", "ab") as file:
            file.write(b"x")
        time.sleep(0.05)
        continue
    if pid == 0:
        with open("forks", "ab") as file:
            file.write(b"x")
time.sleep(60)  # every process holds its slot until the runner ends the group
""")


def tasks_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        if f"\nUid:\t{uid}\t" in status:
            count += 1
    return count


async def run_watching(spec: RunSpec, uid: int) -> tuple[RunReport, int]:
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, await anyio.to_thread.run_sync(tasks_of, uid))
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        report = await run_experiment(spec)
        tg.cancel_scope.cancel()
    return report, most


def test_fork_bomb_is_contained_and_the_next_run_goes_on(config: Config, tmp_path: Path) -> None:
    sandbox = probe(config, nproc=BOMB_NPROC)
    assert sandbox.isolation.processes_bounded, sandbox.isolation.fields()
    slot = 4242
    uid = sandbox.uid(slot)
    assert uid is not None, "the daemon runs as root here, so the child needs its own uid"
    config.experiment.workspace.joinpath("forks").write_bytes(b"")
    spec = spec_for(config, BOMB_SCRIPT, sandbox, budget=3.0, slot=slot)
    started = time.monotonic()
    report, most = anyio.run(run_watching, spec, uid)
    assert report.outcome == "timeout"
    assert time.monotonic() - started < 20
    forks = (report.run_dir / "forks").stat().st_size
    assert forks < BOMB_NPROC, f"{forks} forks succeeded"
    assert (report.run_dir / "refused").stat().st_size > 0, "the bomb never met its limit"
    assert 0 < most <= BOMB_NPROC
    deadline = time.monotonic() + 5
    while tasks_of(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tasks_of(uid) == 0, "processes of the bomb outlived its run"
    after = run(spec_for(config, summary_script("metrics['after'] = 1"), sandbox, slot=slot))
    assert after.outcome == "ok", after.error
    assert metric(after, "after") == 1


@pytest.mark.slow
def test_real_train_py_runs_in_the_sandbox(config: Config, sandbox: Sandbox) -> None:
    from autoresearchd.tracks import prepare_track

    prepare_track("synthetic", config.experiment.data_dir)
    shutil.copy(ROOT / "train.py", config.experiment.workspace / "train.py")
    source = (ROOT / "train.py").read_text()
    report = run(spec_for(config, source, sandbox, budget=3.0, grace=60.0))
    assert report.outcome == "ok", report.error + "\n" + report.log_path.read_text()[-2000:]
    assert report.summary is not None and report.summary.is_valid


def test_secrets_never_reach_a_child_even_with_the_sandbox_off(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTORESEARCHD_TOKEN", "secret")
    monkeypatch.setenv("MY_API_KEY", "secret")
    monkeypatch.setenv("INHERITED_FLAG", "on")
    script = summary_script(
        'names = ("AUTORESEARCHD_TOKEN", "MY_API_KEY")\n'
        'metrics["secret_env"] = sum(name in os.environ for name in names)\n'
        'metrics["inherited"] = int(os.environ.get("INHERITED_FLAG") == "on")\n'
    )
    report = run(spec_for(config, script, None))
    assert metric(report, "secret_env") == 0
    assert metric(report, "inherited") == 1
