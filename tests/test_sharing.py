"""Sharing what a worker learned: a follow-up to each keep, insights at most every so often."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.config import Config
from autoresearchd.config_loader import parse_config
from autoresearchd.memory.ensue_client import EnsueMemory
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Best, Candidate, Note, Result, Status
from autoresearchd.sharing import Sharing
from autoresearchd.testing import ok_script

from .hub.support import free_port

pytestmark = pytest.mark.anyio

PARENT = ok_script(lr=0.01)
CHILD = Candidate(ok_script(lr=0.02), parent_sha256=None, description="LR up")
BEST = Best("synthetic", None, 1.2, PARENT, "p", "bob-1", "bob", 0.0)


def config(share_notes: bool = True) -> Config:
    return parse_config({"proposer": {"share_notes": share_notes}})


def keep_of(candidate: Candidate) -> Result:
    return Result(
        id="alice-1",
        agent_id="alice",
        track="synthetic",
        status=Status.KEEP,
        val_bpb=1.1,
        description=candidate.description,
        train_py=candidate.source,
        train_py_sha256=candidate.sha256,
        parent_sha256=None,
        seed=1,
        device_name="cpu",
        device_uuid="cpu-0",
        memory_gb=0.0,
        vram_tier="cpu",
        started_at=0.0,
        completed_at=1.0,
        duration_s=1.0,
    )


def unreachable() -> EnsueMemory:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    return EnsueMemory(url, "test", "key", primary_track="synthetic", attempts=1)


async def test_a_keep_is_followed_up_once_with_the_next_step_in_its_direction(
    tmp_path: Path,
) -> None:
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        sharing = Sharing(memory, lambda: PARENT)
        sharing.kept(keep_of(CHILD))
        await sharing.share(config(), CHILD, BEST)
        await sharing.share(config(), CHILD, BEST)  # the keep was used up
        notes = await memory.notes("hypotheses", 10)
    assert len(notes) == 1
    assert notes[0].value["suggested_config"] == {"LR": 0.04}
    assert notes[0].value["evidence"] == ["alice-1"]


@pytest.mark.parametrize("best", [BEST, None])
async def test_no_follow_up_for_another_candidate_or_without_a_best(
    tmp_path: Path, best: Best | None
) -> None:
    other = Candidate(ok_script(lr=0.03), parent_sha256=None, description="LR up more")
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        sharing = Sharing(memory, lambda: PARENT)
        sharing.kept(keep_of(other if best else CHILD))
        await sharing.share(config(), CHILD, best)
        assert await memory.notes("hypotheses", 10) == []


async def test_nothing_is_shared_when_sharing_notes_is_off(tmp_path: Path) -> None:
    async with SqliteMemory(tmp_path / "memory.sqlite") as memory:
        sharing = Sharing(memory, lambda: PARENT)
        sharing.kept(keep_of(CHILD))
        with capture_logs() as logs:
            await sharing.share(config(share_notes=False), CHILD, BEST)
        assert await memory.notes("hypotheses", 10) == []
    assert logs == []


async def test_insights_are_looked_for_at_most_once_an_interval() -> None:
    async with unreachable() as memory:
        sharing = Sharing(memory, lambda: PARENT)
        with capture_logs() as logs:
            await sharing.share(config(), CHILD, None)
            await sharing.share(config(), CHILD, None)
    assert [e["event"] for e in logs] == ["history_unavailable"]


async def test_a_note_the_memory_cannot_take_is_logged_and_dropped() -> None:
    async with unreachable() as memory:
        with capture_logs() as logs:
            await Sharing(memory, lambda: PARENT).put_note("insights", Note("k", "a", {}, 1.0))
    assert [(e["event"], e["kind"]) for e in logs] == [("note_unpublished", "insights")]


async def test_an_unreadable_baseline_means_no_spaces_rather_than_a_crash() -> None:
    def missing() -> str:
        raise FileNotFoundError("train.py")

    async with unreachable() as memory:
        assert Sharing(memory, missing).proposer_spaces() is None
        assert Sharing(memory, lambda: PARENT).proposer_spaces() is not None
