"""The ensue backend against a real ``autoresearchd hub serve`` process on loopback."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoresearchd.errors import TransientMemoryError
from autoresearchd.memory.ensue import EnsueMemory
from tests.hub.support import TRACK, HubProcess, free_port, hub_process
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
