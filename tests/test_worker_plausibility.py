"""A daemon records a score no honest run can reach as ``invalid``, and it never becomes a best."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.models import Status
from autoresearchd.testing import PLAN_ENV
from autoresearchd.tracks.prepare import prepare_track
from tests.test_worker import run_daemon

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


@pytest.mark.parametrize(
    ("printed", "reason"),
    [
        ("-1.0", "val_bpb -1.0 is not positive"),
        ("0.502", "val_bpb 0.502 is below the synthetic track's floor 1.7363"),
    ],
)
async def test_a_fabricated_baseline_score_is_invalid_and_sets_no_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, printed: str, reason: str
) -> None:
    """The baseline's train.py prints a made-up val_bpb; later runs are honest (about 3.0)."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    results = await run_daemon(tmp_path, data_dir, [f"val={printed}"], 3, nvml=None)
    baseline = [r for r in results if r.description == "baseline"]
    assert [(r.status, r.val_bpb) for r in baseline] == [(Status.INVALID, float(printed))]
    assert baseline[0].error == f"implausible: {reason}"
    async with SqliteMemory(tmp_path / "state" / "memory.sqlite") as memory:
        best = await memory.get_best("synthetic")
    assert best is None or best.val_bpb > 2.0


@pytest.mark.parametrize(("printed", "shown"), [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf")])
async def test_a_non_finite_baseline_score_is_invalid_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, printed: str, shown: str
) -> None:
    """A clean exit that reports NaN or inf claims a score: refused with its reason, kept as
    no val_bpb (JSON has no NaN), and the honest runs after it go on as usual."""
    monkeypatch.setenv(PLAN_ENV, str(tmp_path / "plan"))
    results = await run_daemon(tmp_path, data_dir, [f"val={printed}"], 3, nvml=None)
    baseline = [r for r in results if r.description == "baseline"]
    assert [(r.status, r.val_bpb) for r in baseline] == [(Status.INVALID, None)]
    assert baseline[0].error == f"implausible: val_bpb {shown} is not finite"
    assert any(r.status is not Status.INVALID and r.val_bpb for r in results[1:])
