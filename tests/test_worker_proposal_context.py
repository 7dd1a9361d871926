"""The proposal context a worker builds carries its device kind, on every path it can take.

Workers drive a CPU slot and a GPU found through the fake NVML, with a real SQLite memory
and, for the path where the history is out of reach, a hub client pointed at a closed port.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.gpus import Gpus
from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Device
from autoresearchd.proposers.base import Proposer
from autoresearchd.proposers.hypotheses import HypothesisProposer
from autoresearchd.proposers.perturb import PerturbProposer
from autoresearchd.testing import FakeNvml

from .hub.support import free_port
from .test_worker_network import a_worker

pytestmark = pytest.mark.anyio


async def a_gpu() -> Device:
    async with Gpus(FakeNvml.with_gpus(1)) as gpus:
        (gpu,) = (await gpus.discover()).gpus
    return gpu


@pytest.mark.parametrize("proposer", [PerturbProposer(), HypothesisProposer()])
async def test_the_context_names_the_workers_device_kind(
    tmp_path: Path, proposer: Proposer
) -> None:
    """With and without history: a GPU worker says cuda and its tier, a CPU worker cpu."""
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        gpu = await a_gpu()
        on_gpu = await a_worker(tmp_path, memory, gpu).proposing.context(proposer)
        on_cpu = await a_worker(tmp_path, memory, Device.cpu(0)).proposing.context(proposer)
    assert (on_gpu.device, on_cpu.device) == ("cuda", "cpu")
    assert (on_gpu.tier, on_cpu.tier) == (gpu.tier, "cpu") and gpu.tier != "cpu"


async def test_the_context_keeps_the_device_kind_when_the_history_is_out_of_reach(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    memory = EnsueMemory(url, "test", "key", primary_track="synthetic", attempts=1)
    async with memory:
        with capture_logs() as logs:
            context = await a_worker(tmp_path, memory, await a_gpu()).proposing.context(
                HypothesisProposer()
            )
    assert "history_unavailable" in [entry["event"] for entry in logs]
    assert context.results == () and context.device == "cuda" and context.tier != ""
