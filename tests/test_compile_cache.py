"""The compile cache: keyed per device and trust level, reachable and writable in the sandbox,
persistent across runs, and nothing else of the state directory with it."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from autoresearchd.compile_cache import (
    KEEP_CANDIDATES,
    cache_dir,
    cache_env,
    for_run,
    prepare,
)
from autoresearchd.config_loader import parse_config
from autoresearchd.models import Candidate, Device
from autoresearchd.sandbox_probe import probe

from .test_sandbox import metric, run, spec_for, summary_script
from .test_sandbox_reach import config_under, tool  # noqa: F401 (a fixture)

STATE = Path("/srv/state")


def test_one_cache_per_device_and_trust_level() -> None:
    shared = cache_dir(STATE, "GPU-1", "params-only", "a" * 64)
    assert shared == STATE / "compile-cache" / "GPU-1" / "params-only"
    assert cache_dir(STATE, "GPU-1", "params-only", "b" * 64) == shared
    assert cache_dir(STATE, "GPU-2", "params-only", "a" * 64) != shared
    assert cache_dir(STATE, "GPU-1", "any", "a" * 64) != shared
    assert cache_dir(STATE, "../../etc", "any", "a" * 64).parent.name == ".._.._etc"


def test_sandboxed_scripts_each_get_their_own_cache() -> None:
    first = cache_dir(STATE, "GPU-1", "sandboxed", "a" * 64)
    second = cache_dir(STATE, "GPU-1", "sandboxed", "b" * 64)
    assert first != second and first.parent == second.parent
    assert first.name == "a" * 16


def test_old_candidate_caches_are_pruned(tmp_path: Path) -> None:
    made = []
    for i in range(KEEP_CANDIDATES + 3):
        path = prepare(
            cache_dir(tmp_path, "cpu-0", "sandboxed", f"{i:016x}" + "0" * 48), "sandboxed"
        )
        assert path is not None
        os.utime(path, (time.time() + i, time.time() + i))  # each newer than the last
        made.append(path)
    left = sorted(p.name for p in made[0].parent.iterdir())
    assert len(left) == KEEP_CANDIDATES + 1  # the newest, and the one just made
    assert made[-1].name in left and made[0].name not in left


def test_for_run_follows_the_config(tmp_path: Path) -> None:
    raw = {
        "daemon": {"state_dir": str(tmp_path / "state"), "agent": "a"},
        "experiment": {"trust": "sandboxed"},
    }
    config = parse_config(raw, source=tmp_path / "config.toml")
    candidate = Candidate(source="print(1)\n", parent_sha256=None, description="c")
    path = for_run(config, Device.cpu(0), candidate)
    assert path is not None
    assert path == tmp_path / "state" / "compile-cache" / "cpu-0" / "sandboxed" / path.name
    assert path.is_dir() and path.name == candidate.sha256[:16]


USES_CACHE = summary_script("""
cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
os.makedirs(cache, exist_ok=True)
before = len(os.listdir(cache))
with open(os.path.join(cache, f"kernel-{before}"), "w") as file:
    file.write("compiled")
metrics["entries_before"] = before
state = os.environ["STATE_DIR"]
metrics["memory_hidden"] = int(not os.path.exists(os.path.join(state, "memory.sqlite")))
""")


def test_the_cache_is_writable_in_the_sandbox_and_lasts(
    tmp_path: Path,
    tool: str,  # noqa: F811 (the fixture)
) -> None:
    config = config_under(tmp_path)
    sandbox = probe(config)
    assert sandbox.isolation.tool == tool, (sandbox.isolation.fields(), sandbox.degraded)
    state = config.daemon.state_dir
    cache = prepare(cache_dir(state, "cpu-0", "params-only", "a" * 64), "params-only")
    assert cache is not None
    env = {**cache_env(cache), "STATE_DIR": str(state)}
    for runs in range(2):
        spec = spec_for(config, USES_CACHE, sandbox, env=env)
        spec = dataclasses.replace(spec, wrap=sandbox.wrapper(spec.run_dir, 0, (cache,)))
        report = run(spec)
        assert report.outcome == "ok", report.error + "\n" + report.log_path.read_text()[-1500:]
        # The second run finds what the first compiled; the rest of the state stays hidden.
        assert metric(report, "entries_before") == runs
        assert metric(report, "memory_hidden") == 1
    assert len(list((cache / "inductor").iterdir())) == 2
