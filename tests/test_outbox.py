"""The outbox keeps every result on disk until the memory acknowledges it, and loses
none to a full disk or a bad file."""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from autoresearchd.errors import RunError
from autoresearchd.models import Result, Status
from autoresearchd.outbox import Outbox

from .full_disk import SmallFilesystem, small_filesystem


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


def test_put_leaves_the_fsyncs_to_sync_and_pending_runs_them_first(outbox: Outbox) -> None:
    outbox.put(make_result("r1"))
    outbox.put(make_result("r2"))
    assert outbox.unsynced() == 2
    assert json.loads((outbox.root / "r1.json").read_text())["id"] == "r1"
    assert outbox.sync() == 0 and outbox.unsynced() == 0
    outbox.put(make_result("r3"))
    assert [r.id for r in outbox.pending()] == ["r1", "r2", "r3"]
    assert outbox.unsynced() == 0, "nothing is handed out for sending before it is on disk"


def test_sync_skips_a_result_removed_before_it_and_keeps_what_it_could_not_sync(
    outbox: Outbox,
) -> None:
    outbox.put(make_result("r1"))
    outbox.remove("r1")
    assert outbox.unsynced() == 0 and outbox.sync() == 0
    outbox.put(make_result("r2"))
    entry = outbox.root / "r2.json"
    entry.unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(entry))  # a path that open() refuses (ENXIO)
        with capture_logs() as logs:
            assert outbox.sync() == 1
    assert outbox.unsynced() == 1, "kept for the next sync"
    assert [e["event"] for e in logs] == ["outbox_sync_failed"]


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


# -- a full disk ------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallFilesystem]:
    with small_filesystem(tmp_path / "fs") as disk:
        yield disk


@pytest.fixture
def full_outbox(small_disk: SmallFilesystem) -> Outbox:
    box = Outbox(small_disk.path / "outbox")
    box.open()
    return box


def test_a_full_disk_holds_the_result_in_memory_and_leaves_no_tmp(
    small_disk: SmallFilesystem, full_outbox: Outbox
) -> None:
    result = make_result("r1")
    small_disk.fill()
    with capture_logs() as logs:
        assert full_outbox.put(result) is False
    assert list(full_outbox.root.iterdir()) == [full_outbox.failed_dir], "no .tmp left behind"
    assert full_outbox.pending() == [result], "a held result is still pending"
    assert full_outbox.depth() == 1 and full_outbox.held() == [result]
    assert full_outbox.last_error == "No space left on device"
    [failed] = [e for e in logs if e["event"] == "outbox_write_failed"]
    assert failed["result_id"] == "r1" and failed["held"] == 1
    assert full_outbox.spill() == 1, "still full: still held"

    small_disk.free()
    with capture_logs() as logs:
        assert full_outbox.spill() == 0
    assert [e["written"] for e in logs if e["event"] == "outbox_write_resumed"] == [1]
    assert full_outbox.held() == [] and full_outbox.last_error == ""
    again = Outbox(full_outbox.root)
    again.open()
    assert again.pending() == [result], "once space returned, the result is on disk"


def test_a_refusal_on_a_full_disk_keeps_the_result(
    small_disk: SmallFilesystem, full_outbox: Outbox
) -> None:
    full_outbox.put(make_result("r1"))
    small_disk.fill()
    with capture_logs() as logs:
        full_outbox.fail("r1", "refused: bad record")  # the reason file cannot be written
    assert full_outbox.pending() == [], "set aside: not published again in this run"
    assert [e["file"] for e in logs if e["event"] == "outbox_entry_set_aside"] == [
        str(full_outbox.root / "r1.json")
    ]
    small_disk.free()
    again = Outbox(full_outbox.root)
    again.open()
    assert [r.id for r in again.pending()] == ["r1"], "kept, and offered again after restart"


def test_a_held_result_refused_for_good_is_parked_once_the_disk_allows(
    small_disk: SmallFilesystem, full_outbox: Outbox
) -> None:
    small_disk.fill()
    full_outbox.put(make_result("r1"))
    full_outbox.fail("r1", "refused: bad record")
    assert full_outbox.pending() == [] and full_outbox.depth() == 0
    assert [r.id for r in full_outbox.held()] == ["r1"], "refused, but only in memory"
    small_disk.free()
    assert full_outbox.spill() == 0
    assert json.loads((full_outbox.failed_dir / "r1.json").read_text())["id"] == "r1"
    assert (full_outbox.failed_dir / "r1.reason").read_text() == "refused: bad record\n"


# -- failed/ entries whose cause has passed -----------------------------------------------


def park(outbox: Outbox, rid: str, reason: str | None) -> None:
    record = json.dumps(make_result(rid).to_record())
    (outbox.failed_dir / f"{rid}.json").write_text(record)
    if reason is not None:
        (outbox.failed_dir / f"{rid}.reason").write_text(reason + "\n")


def test_start_up_retries_parked_results_whose_cause_was_transient(outbox: Outbox) -> None:
    park(outbox, "full", "/state/memory.sqlite: database or disk is full")
    park(outbox, "enospc", "[Errno 28] No space left on device")
    park(outbox, "unknown", None)  # its reason could not be written: the cause is unknown
    park(outbox, "refused", "hub refused: agent not verified")
    with capture_logs() as logs:
        outbox.open()
    assert sorted(r.id for r in outbox.pending()) == ["enospc", "full", "unknown"]
    assert sorted(p.name for p in outbox.failed_dir.iterdir()) == ["refused.json", "refused.reason"]
    retried = sorted(Path(e["file"]).name for e in logs if e["event"] == "outbox_failed_retried")
    assert retried == ["enospc.json", "full.json", "unknown.json"]


# -- entries that cannot be read back ---------------------------------------------------


def _record_with(**changes: object) -> bytes:
    return json.dumps({**make_result("bad").to_record(), **changes}).encode()


CORRUPT = {
    "a list": b"[]",
    "null": b"null",
    "a text completed_at": _record_with(completed_at="2026-12-01T10:00:00Z"),
    "invalid UTF-8": b'{"id": "bad\xff"}',
    "truncated JSON": _record_with()[:40],
    "a missing field": json.dumps({"id": "bad"}).encode(),
    "a boolean seed": _record_with(seed=True),
    "an unknown status": _record_with(status="great"),
    "text metrics": _record_with(metrics={"num_steps": "ten"}),
    "another id": _record_with(id="other"),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_an_unreadable_entry_is_set_aside_with_its_reason(outbox: Outbox, content: bytes) -> None:
    (outbox.root / "bad.json").write_bytes(content)
    outbox.put(make_result("good"))
    with capture_logs() as logs:
        assert [r.id for r in outbox.pending()] == ["good"]
    [line] = [e for e in logs if e["event"] == "outbox_entry_set_aside"]
    assert line["file"] == str(outbox.root / "bad.json")
    assert (outbox.failed_dir / "bad.json").read_bytes() == content
    reason = (outbox.failed_dir / "bad.reason").read_text()
    assert reason.startswith("unreadable outbox entry: ") and reason.count("\n") == 1
    assert outbox.depth() == 1
    outbox.open()  # a restart does not bring it back: its cause is no passing one
    assert [r.id for r in outbox.pending()] == ["good"]


def test_a_directory_in_place_of_an_entry_is_set_aside(outbox: Outbox) -> None:
    (outbox.root / "bad.json").mkdir()
    outbox.put(make_result("good"))
    with capture_logs() as logs:
        assert [r.id for r in outbox.pending()] == ["good"]
    [line] = [e for e in logs if e["event"] == "outbox_entry_set_aside"]
    assert "Is a directory" in line["reason"]
    assert (outbox.failed_dir / "bad.json").is_dir()


def test_an_entry_that_cannot_be_moved_is_skipped_not_fatal(outbox: Outbox) -> None:
    """A directory cannot replace a file of the same name in failed/: it stays, skipped."""
    (outbox.failed_dir / "bad.json").write_text("{}")
    (outbox.root / "bad.json").mkdir()
    with capture_logs() as logs:
        assert outbox.pending() == []
        assert outbox.pending() == []
    assert outbox.depth() == 0
    assert [e["log_level"] for e in logs if e["event"] == "outbox_entry_set_aside"] == ["error"]


def test_an_entry_with_an_unsafe_id_is_set_aside(outbox: Outbox) -> None:
    """Its id would be refused when the result is removed after publishing."""
    (outbox.root / ".hidden.json").write_text(json.dumps(make_result(".hidden").to_record()))
    assert outbox.pending() == []
    reason = (outbox.failed_dir / ".hidden.reason").read_text()
    assert "not a safe file name" in reason
