"""The sandbox works wherever a user starts it: a state directory or an interpreter under a
private (0700) home, with bubblewrap and with the unshare fallback; children run the very
interpreter the results record, subprocesses and spawn pools included; each daemon has its
own uids; without bubblewrap a run still cannot touch other runs, the host's /tmp or the
memory; and a probe that fails stops start-up with one line naming the path and the fix.

Like tests/test_sandbox.py these need the isolation they check (root, bubblewrap, unshare,
mount): on a host without it they fail and say what is missing; they are never skipped.
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoresearchd.config import Config
from autoresearchd.config_loader import parse_config
from autoresearchd.errors import ConfigError
from autoresearchd.sandbox import UidRange
from autoresearchd.sandbox_layout import Kind, plan_mounts
from autoresearchd.sandbox_probe import find_tools, open_sandbox, probe

from .daemon_process import cli
from .test_sandbox import metric, run, spec_for, summary_script

#: Tools the unshare fallback uses; a PATH holding only these hides bubblewrap.
UNSHARE_TOOLS = ("unshare", "prlimit", "setpriv", "mount", "mkdir", "sh", "true")


@pytest.fixture
def home() -> Iterator[Path]:
    """A private home outside /tmp (which the sandbox replaces anyway), like /root."""
    path = Path(tempfile.mkdtemp(prefix="private-home-", dir="/var/tmp"))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["bwrap", "unshare"])
def tool(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each sandbox tool in turn; for unshare, PATH lacks bubblewrap."""
    if request.param == "unshare":
        bin_dir = tmp_path / "bin-without-bwrap"
        bin_dir.mkdir()
        for name in UNSHARE_TOOLS:
            found = shutil.which(name)
            assert found, f"{name} is missing on this host (util-linux, coreutils)"
            (bin_dir / name).symlink_to(found)
        monkeypatch.setenv("PATH", str(bin_dir))
    return str(request.param)


def config_under(root: Path, **experiment: str) -> Config:
    state = root / "state"
    (state / "runs").mkdir(parents=True, exist_ok=True)
    (state / "memory.sqlite").write_text("the collective memory")
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "tokens.bin").write_text("data")
    workspace = root / "workspace"
    workspace.mkdir(exist_ok=True)
    (workspace / "train.py").write_text("print('baseline')\n")
    raw = {
        "daemon": {"state_dir": str(state), "agent": "tester"},
        "experiment": {"workspace": str(workspace), "data_dir": str(root / "data"), **experiment},
    }
    return parse_config(raw, source=root / "config.toml")


INTERPRETER_SCRIPT = summary_script("""
import multiprocessing, platform, subprocess
def square(n):
    return n * n
if __name__ == "__main__":
    metrics["version_ok"] = int(platform.python_version() == os.environ["WANT_VERSION"])
    metrics["base_ok"] = int(sys.base_prefix == os.environ["WANT_BASE"])
    metrics["prefix_ok"] = int(sys.prefix == os.environ["WANT_PREFIX"])
    child = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True)
    metrics["popen"] = int(child.stdout.strip() == b"42")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        metrics["spawn_pool"] = sum(pool.map(square, range(4)))
    data = os.path.join(os.environ["AUTORESEARCH_DATA_DIR"], "tokens.bin")
    metrics["data_read"] = int(open(data).read() == "data")
""")


def expect_interpreter(prefix: str, base: str) -> dict[str, str]:
    return {"WANT_VERSION": platform.python_version(), "WANT_BASE": base, "WANT_PREFIX": prefix}


def assert_runs_our_interpreter(config: Config, tool: str, env: dict[str, str]) -> None:
    sandbox = probe(config)
    assert sandbox.isolation.tool == tool, (sandbox.isolation.fields(), sandbox.degraded)
    assert sandbox.degraded == "", sandbox.degraded
    assert sandbox.isolation.own_uid, "the daemon runs as root here, so the child needs a uid"
    report = run(spec_for(config, INTERPRETER_SCRIPT, sandbox, env=env))
    assert report.outcome == "ok", report.error + "\n" + report.log_path.read_text()[-1500:]
    for name in ("version_ok", "base_ok", "prefix_ok", "popen", "data_read"):
        assert metric(report, name) == 1, name
    assert metric(report, "spawn_pool") == 14


def test_state_dir_under_a_private_home_just_works(home: Path, tool: str) -> None:
    config = config_under(home)
    assert_runs_our_interpreter(config, tool, expect_interpreter(sys.prefix, sys.base_prefix))


@pytest.fixture
def private_venv(home: Path) -> Path:
    """A venv with its own copy of the interpreter, inside the private home (as uv, pyenv
    or conda put one under /root), that imports this project's packages."""
    venv = home / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--copies", "--without-pip", str(venv)], check=True
    )
    site = Path(
        subprocess.check_output(
            [
                venv / "bin" / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            text=True,
        ).strip()
    )
    ours = sysconfig.get_path("purelib")
    # A .pth "import" line runs at start-up, so our site's own .pth files (the editable
    # install) are honoured too.
    (site / "ours.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return venv


def test_interpreter_under_a_private_home_is_the_one_that_runs(
    home: Path, private_venv: Path, tool: str
) -> None:
    config = config_under(home, python=str(private_venv / "bin" / "python"))
    env = expect_interpreter(str(private_venv), sys.base_prefix)
    assert_runs_our_interpreter(config, tool, env)


# -- without bubblewrap ---------------------------------------------------------------

CONTAINED_SCRIPT = summary_script("""
escaped = 0
for target in os.environ["OUTSIDE"].split(os.pathsep):
    try:
        with open(target, "w") as file:
            file.write("escaped")
        escaped += 1
    except OSError:
        pass
metrics["escaped"] = escaped
try:
    metrics["memory_read"] = int("memory" in open(os.environ["MEMORY"]).read())
except OSError:
    metrics["memory_read"] = 0
metrics["host_tmp_seen"] = int(os.path.exists(os.environ["HOST_TMP_MARK"]))
open("mine.txt", "w").write("mine")
open(os.environ["HOST_TMP_FILE"], "w").write("in the private /tmp, which the host never sees")
metrics["inside"] = 1
""")


def test_without_bwrap_a_run_cannot_touch_other_runs_host_tmp_or_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_under(tmp_path)
    other_run = config.run_dir / "other-run"
    other_run.mkdir()
    (other_run / "train.py").write_text("theirs")
    tag = uuid.uuid4().hex[:8]
    host_tmp = Path("/tmp") / f"escape-{tag}.txt"
    mark = Path("/tmp") / f"host-mark-{tag}.txt"
    mark.write_text("host")
    outside = [other_run / "train.py", other_run / "new.txt", config.run_dir / tag]
    env = {
        "HOST_TMP_FILE": str(host_tmp),
        "OUTSIDE": os.pathsep.join(map(str, outside)),
        "MEMORY": str(config.daemon.state_dir / "memory.sqlite"),
        "HOST_TMP_MARK": str(mark),
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in UNSHARE_TOOLS:
        (bin_dir / name).symlink_to(shutil.which(name) or f"/missing/{name}")
    monkeypatch.setenv("PATH", str(bin_dir))
    sandbox = probe(config)
    assert sandbox.isolation.tool == "unshare", (sandbox.isolation.fields(), sandbox.degraded)
    try:
        report = run(spec_for(config, CONTAINED_SCRIPT, sandbox, env=env))
        assert report.outcome == "ok", report.error + report.log_path.read_text()[-1500:]
        assert metric(report, "inside") == 1
        assert (report.run_dir / "mine.txt").read_text() == "mine"
        assert metric(report, "escaped") == 0
        assert metric(report, "memory_read") == 0
        assert metric(report, "host_tmp_seen") == 0
        assert (other_run / "train.py").read_text() == "theirs"
        assert not (other_run / "new.txt").exists()
        assert not host_tmp.exists()
        assert not (config.run_dir / tag).exists()
    finally:
        host_tmp.unlink(missing_ok=True)
        mark.unlink()


# -- uids per daemon --------------------------------------------------------------------


def test_each_daemon_claims_its_own_uids(tmp_path: Path) -> None:
    first, second = UidRange.claim(tmp_path), UidRange.claim(tmp_path)
    assert first.instance != second.instance
    ours = {first.uid(slot) for slot in (0, 1, 2, None)}
    theirs = {second.uid(slot) for slot in (0, 1, 2, None)}
    assert len(ours) == 4 and not ours & theirs
    assert first.uid(1) == first.uid(1)  # a worker keeps its uid
    instance = first.instance
    del first
    gc.collect()
    assert UidRange.claim(tmp_path).instance == instance  # a stopped daemon's block is free


def test_two_daemons_on_one_host_give_slot_zero_different_uids(tmp_path: Path) -> None:
    one = probe(config_under(tmp_path / "one"))
    two = probe(config_under(tmp_path / "two"))
    assert one.uid(0) is not None, "the daemon runs as root here, so children get own uids"
    assert one.uid(0) != two.uid(0)


# -- a failing probe stops start-up, in one line ---------------------------------------


def test_data_the_sandbox_user_cannot_read_names_the_path_and_fix(tmp_path: Path) -> None:
    config = config_under(tmp_path, sandbox="required")
    config.experiment.data_dir.chmod(0o700)
    with pytest.raises(ConfigError) as raised:
        open_sandbox(config)
    message = str(raised.value)
    assert "\n" not in message
    assert str(config.experiment.data_dir) in message
    assert "chmod o+rX" in message


def test_an_interpreter_without_the_harness_is_refused(tmp_path: Path) -> None:
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    config = config_under(tmp_path, python=str(base_python))
    with pytest.raises(ConfigError, match=r"experiment\.python: .* cannot import autoresearchd"):
        open_sandbox(config)


def test_run_exits_2_at_once_when_the_interpreter_is_missing(tmp_path: Path) -> None:
    config = config_under(tmp_path)
    config.source.write_text(
        f'[daemon]\nstate_dir = "{config.daemon.state_dir}"\n[devices]\ngpus = "none"\n'
        f'[experiment]\nworkspace = "{config.experiment.workspace}"\n'
        f'data_dir = "{config.experiment.data_dir}"\npython = "/nonexistent/python"\n'
    )
    done = cli("run", "--config", config.source)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "/nonexistent/python" in line]
    assert lines and "experiment.python" in lines[-1], done.stderr


# -- the mount plan ----------------------------------------------------------------------


def test_mounts_mask_unsearchable_parents_and_keep_the_state_hidden(home: Path) -> None:
    state = home / "clone" / "state"
    run_dir = state / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (home / "clone" / ".venv").mkdir()
    steps = plan_mounts(
        run_dir=run_dir, readable=[home / "clone"], hidden_dirs=[state], uid=0x70000000
    )
    kinds = [(m.kind, m.path) for m in steps]
    assert ("tmpfs", home) in kinds  # the 0700 home, masked
    # The clone is bound back, then its state hidden again, then the run bound writable.
    bound: list[tuple[Kind, Path]] = [("ro", home / "clone"), ("tmpfs", state), ("rw", run_dir)]
    order = [kinds.index(k) for k in bound]
    assert order == sorted(order)
    assert ("dir", state / "runs") in kinds  # traversable inside the hiding tmpfs
    assert find_tools()  # real paths of the helpers on PATH
