"""The outbox keeps every result on disk until the memory acknowledges it."""

import json
from pathlib import Path

import pytest

from autoresearchd.errors import RunError
from autoresearchd.models import Result, Status
from autoresearchd.outbox import Outbox


def make_result(rid: str, completed_at: float = 1.0, **changes: object) -> Result:
    base = Result(
        id=rid,
        agent_id="a",
        track="synthetic",
        status=Status.DISCARD,
        val_bpb=2.5,
        description="LR 0.1 → 0.2",
        train_py="LR = 0.2\n",
        train_py_sha256="f" * 64,
        parent_sha256="e" * 64,
        seed=7,
        device_name="cpu",
        device_uuid="cpu-0",
        memory_gb=0.0,
        vram_tier="cpu",
        started_at=0.0,
        completed_at=completed_at,
        duration_s=1.0,
        metrics={"num_steps": 10.0},
        software={"python": "3.11"},
    )
    return base.with_(**changes)


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox")
    box.open()
    return box


def test_put_then_pending_round_trips_every_field(outbox: Outbox) -> None:
    result = make_result("r1")
    outbox.put(result)
    assert outbox.pending() == [result]
    assert outbox.depth() == 1


def test_pending_is_ordered_by_completion(outbox: Outbox) -> None:
    outbox.put(make_result("b", completed_at=3.0))
    outbox.put(make_result("a", completed_at=5.0))
    outbox.put(make_result("c", completed_at=1.0))
    assert [r.id for r in outbox.pending()] == ["c", "b", "a"]


def test_survives_a_new_instance_like_a_restart(outbox: Outbox) -> None:
    outbox.put(make_result("r1"))
    again = Outbox(outbox.root)
    again.open()
    assert [r.id for r in again.pending()] == ["r1"]


def test_remove_and_interrupted_writes(outbox: Outbox) -> None:
    outbox.put(make_result("r1"))
    (outbox.root / "r2.tmp").write_text("{half")
    outbox.open()  # start-up clears writes that were cut off
    assert not (outbox.root / "r2.tmp").exists()
    outbox.remove("r1")
    assert outbox.pending() == []


def test_failed_results_are_parked_with_reason_not_deleted(outbox: Outbox) -> None:
    outbox.put(make_result("r1"))
    outbox.fail("r1", "refused: bad record")
    assert outbox.pending() == []
    parked = json.loads((outbox.failed_dir / "r1.json").read_text())
    assert parked["id"] == "r1"
    assert (outbox.failed_dir / "r1.reason").read_text().strip() == "refused: bad record"


def test_corrupt_entry_is_quarantined(outbox: Outbox) -> None:
    (outbox.root / "bad.json").write_text("not json")
    outbox.put(make_result("good"))
    assert [r.id for r in outbox.pending()] == ["good"]
    assert (outbox.failed_dir / "bad.json").exists()


def test_unsafe_ids_are_refused(outbox: Outbox) -> None:
    with pytest.raises(RunError):
        outbox.put(make_result("../escape"))
