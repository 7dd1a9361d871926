"""The ensue backend against a real ``autoresearchd hub serve`` process on loopback."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autoresearchd.errors import TransientMemoryError
from autoresearchd.memory.ensue_client import EnsueMemory
from tests.hub.support import (
    TRACK,
    HubProcess,
    free_port,
    hub_process,
    stop,
    wait_healthy,
)
from tests.memory.conformance import FakeClock, MemoryConformance, MemoryFactory, make_result


@pytest.fixture(scope="session")
def served_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, str]]:
    """The shared hub and the key of its verified agent alice (agents span orgs)."""
    with hub_process(tmp_path_factory.mktemp("hub")) as hub:
        yield hub, hub.register("alice")


class TestEnsueOverServedHubConformance(MemoryConformance):
    """Every conformance test over real HTTP; each test gets a fresh org on the shared hub."""

    @pytest.fixture
    def make_memory(self, served_hub: tuple[HubProcess, str]) -> MemoryFactory:
        hub, key = served_hub
        org = hub.new_org()
        return lambda clock: EnsueMemory(hub.url, org, key, primary_track=TRACK, clock=clock)


pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def test_unreachable_hub_fails_fast_as_transient_then_recovers(tmp_path: Path) -> None:
    """No hub: TransientMemoryError within the short budget; once it is up, calls work."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    result = make_result(val_bpb=0.9)
    memory = EnsueMemory(
        url, "test", "no-key-yet", primary_track=TRACK, clock=FakeClock(), min_backoff_s=0.05
    )
    async with memory:
        started = time.monotonic()
        with pytest.raises(TransientMemoryError, match="cannot reach"):
            await memory.publish(result)
        assert time.monotonic() - started < 2.0
    with hub_process(tmp_path, port) as hub:
        key = hub.register("alice")
        async with EnsueMemory(url, "test", key, primary_track=TRACK, clock=FakeClock()) as memory:
            assert (await memory.publish(result)).created
            assert await memory.results(TRACK) == [result]


def test_hub_serve_exits_0_after_a_clean_stop_by_sigterm(tmp_path: Path) -> None:
    """systemd stops a service with SIGTERM: a clean shutdown is a success, not exit 143."""
    with hub_process(tmp_path) as hub:
        hub.register("alice")  # it served a request before it was stopped
        hub.proc.send_signal(signal.SIGTERM)
        assert hub.proc.wait(timeout=30) == 0
    log = (tmp_path / "hub.log").read_text()
    assert "hub_stopped" in log and "Traceback" not in log


def readme_block(after: str) -> list[str]:
    """The lines of the first fenced block in README.md after the line ``after``."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(after) :]
    block = rest.split("```\n", 2)[1]
    return block.splitlines()


def test_the_readme_hub_quick_start_works_as_pasted(tmp_path: Path) -> None:
    """init, serve and register, as README.md writes them, on hub.example.toml as shipped.

    Only the port changes (to a free one) and ``.venv/bin/autoresearchd`` is this
    interpreter's; HOME is a fresh folder, where the example keeps its state.
    """
    init_line, serve_line = readme_block("## A self-hosted hub")
    (register_line,) = readme_block("register an agent:")
    port = free_port()
    example = (ROOT / "hub.example.toml").read_text()
    assert "\nlisten_port = 8765\n" in example and "127.0.0.1:8765/" in register_line
    (tmp_path / "hub.example.toml").write_text(example.replace("= 8765\n", f"= {port}\n"))
    shutil.copy(ROOT / "train.py", tmp_path / "train.py")
    env = {**os.environ, "HOME": str(tmp_path)}
    init = subprocess.run(command(init_line), cwd=tmp_path, env=env, capture_output=True)
    assert init.returncode == 0, init.stderr
    assert b"admin API key" in init.stderr and init.stdout.startswith(b"ard_")
    with (tmp_path / "hub.log").open("wb") as log:
        proc = subprocess.Popen(command(serve_line), cwd=tmp_path, env=env, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_healthy(url, proc, tmp_path / "hub.log")
        body = register_line.split("-d '", 1)[1].split("'", 1)[0]
        path = register_line.rsplit(":8765/", 1)[1]
        reply = httpx.post(url + path, content=body, timeout=10)
        assert reply.status_code == 200, reply.text
        assert set(reply.json()) == {"api_key", "claim_url", "verification_code"}
        assert httpx.get(reply.json()["claim_url"], timeout=10).status_code == 200
    finally:
        stop(proc)
    assert (tmp_path / ".local/state/autoresearchd-hub/hub.sqlite").is_file()


def command(line: str) -> list[str]:
    """A README command line with ``.venv/bin/autoresearchd`` as this interpreter's."""
    words = shlex.split(line)
    assert words[0] == ".venv/bin/autoresearchd", line
    return [sys.executable, "-m", "autoresearchd", *words[1:]]
