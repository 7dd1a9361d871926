"""The worker's trust policy: which network bests may become parents, and how refusals are kept.

A worker with a real SQLite memory and outbox is handed bests as the memory would return
them; the local workspace train.py is the trusted baseline.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.config_loader import parse_config
from autoresearchd.gpus import Gpus
from autoresearchd.hyperparams import parse_params
from autoresearchd.memory import open_memory
from autoresearchd.models import Best, Candidate, Device, Status, sha256_text
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.sandbox_probe import probe
from autoresearchd.testing import FakeNvml, ok_script, write_workspace
from autoresearchd.worker.context import WorkerContext
from autoresearchd.worker.loop import Worker

pytestmark = pytest.mark.anyio

BASELINE = ok_script(lr=0.01)
#: The baseline's declared space for LR.
LR_SPACE = "# search: log 0.001..0.1"


@asynccontextmanager
async def make_worker(
    tmp_path: Path, trust: str = "params-only", sandbox: str = "off"
) -> AsyncIterator[Worker]:
    workspace = write_workspace(tmp_path / "workspace", BASELINE)
    raw = {
        "daemon": {"state_dir": str(tmp_path / "state"), "agent": "tester"},
        "experiment": {"workspace": str(workspace), "trust": trust, "sandbox": sandbox},
    }
    config = parse_config(raw, source=tmp_path / "config.toml")
    outbox = Outbox(config.outbox_dir)
    outbox.open()
    async with open_memory(config) as memory:
        ctx = WorkerContext(
            config=config,
            memory=memory,
            outbox=outbox,
            publisher=Publisher(outbox, memory),
            gpus=Gpus(FakeNvml()),
        )
        yield Worker(Device.cpu(0), ctx, rng=random.Random(7))


def best_of(source: str) -> Best:
    return Best(
        track="synthetic",
        tier=None,
        val_bpb=1.0,
        train_py=source,
        train_py_sha256=sha256_text(source),
        result_id="r1",
        agent_id="stranger",
        updated_at=0.0,
    )


def lr_of(candidate: Candidate) -> float:
    value = parse_params(candidate.source)["LR"].value
    assert isinstance(value, float)
    return value


async def test_best_with_new_values_in_space_becomes_the_parent(tmp_path: Path) -> None:
    best = best_of(ok_script(lr=0.02))
    async with make_worker(tmp_path) as worker:
        child = await worker.proposing.propose(best)
        assert child is not None
        assert child.parent_sha256 == best.train_py_sha256
        assert worker.ctx.outbox.pending() == []


async def test_best_with_changed_code_is_refused_once_and_never_a_parent(tmp_path: Path) -> None:
    hostile = BASELINE + "\nimport socket\nsocket.create_connection(('evil.example', 80))\n"
    baseline_sha = sha256_text(BASELINE)
    async with make_worker(tmp_path) as worker:
        with capture_logs() as logs:
            first = await worker.proposing.propose(best_of(hostile))
            second = await worker.proposing.propose(best_of(hostile))
        assert first is not None and second is not None
        assert first.parent_sha256 == second.parent_sha256 == baseline_sha
        pending = worker.ctx.outbox.pending()
    assert [r.status for r in pending] == [Status.INVALID]
    invalid = pending[0]
    assert invalid.train_py == hostile
    assert invalid.train_py_sha256 == sha256_text(hostile)
    assert invalid.error.startswith("trust: line ")
    assert "import socket" in invalid.error
    assert invalid.val_bpb is None
    refused = [e for e in logs if e["event"] == "best_refused"]
    assert len(refused) == 1
    assert refused[0]["agent"] == "stranger"


async def test_value_outside_the_baseline_space_is_refused(tmp_path: Path) -> None:
    async with make_worker(tmp_path) as worker:
        await worker.proposing.propose(best_of(ok_script(lr=0.5)))
        pending = worker.ctx.outbox.pending()
    assert len(pending) == 1
    assert "LR: 0.5 is outside log 0.001..0.1" in pending[0].error


async def test_refused_best_falls_back_to_the_last_trusted_parent(tmp_path: Path) -> None:
    trusted = best_of(ok_script(lr=0.02))
    async with make_worker(tmp_path) as worker:
        await worker.proposing.propose(trusted)
        child = await worker.proposing.propose(best_of(BASELINE + "\nprint('extra')\n"))
    assert child is not None
    assert child.parent_sha256 == trusted.train_py_sha256


async def test_sandboxed_and_any_accept_changed_code_as_parent(tmp_path: Path) -> None:
    changed = best_of(BASELINE + "\nprint('extra')\n")
    for trust in ("sandboxed", "any"):
        async with make_worker(tmp_path / trust, trust=trust, sandbox="auto") as worker:
            child = await worker.proposing.propose(changed)
            assert child is not None
            assert child.parent_sha256 == changed.train_py_sha256
            assert worker.ctx.outbox.pending() == []


async def test_network_best_cannot_widen_its_own_search_space(tmp_path: Path) -> None:
    """Comments are not code, so the trust check accepts this best; the spaces stay ours."""
    widened = ok_script(lr=0.1).replace(LR_SPACE, "# search: log 0.001..100")
    best = best_of(widened)
    async with make_worker(tmp_path / "trusted") as worker:
        children = [await worker.proposing.propose(best) for _ in range(20)]
        assert worker.ctx.outbox.pending() == []
    lrs = [lr_of(c) for c in children if c is not None and c.parent_sha256 == best.train_py_sha256]
    assert len(lrs) > 5
    assert max(lrs) <= 0.1
    # Without the baseline's spaces (trust = "any") the same parent does widen them.
    async with make_worker(tmp_path / "any", trust="any") as worker:
        children = [await worker.proposing.propose(best) for _ in range(20)]
    assert max(lr_of(c) for c in children if c is not None) > 0.1


async def test_runs_are_wrapped_by_the_sandbox_unless_off(tmp_path: Path) -> None:
    async with make_worker(tmp_path) as worker:
        candidate = Candidate(source=BASELINE, parent_sha256=None, description="baseline")
        assert worker.running.spec("r1", candidate, 1).wrap is None
        worker.ctx.sandbox = probe(worker.config)
        assert worker.running.spec("r2", candidate, 1).wrap is None, "experiment.sandbox is off"
    async with make_worker(tmp_path / "auto", sandbox="auto") as worker:
        worker.ctx.sandbox = probe(worker.config)
        spec = worker.running.spec("r3", candidate, 1)
        assert spec.wrap is not None
        assert spec.command[-2:] == [spec.python, "train.py"]
        assert spec.command[0].endswith("prlimit")
