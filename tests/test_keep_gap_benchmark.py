"""benchmarks/keep_gap.py at a tiny size: its memory counts every call, and what it counts
shows a speculation's cost after a discard (a second claim and its release per run)."""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import partial
from pathlib import Path
from types import ModuleType

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def keep_gap(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setitem(os.environ, "AUTORESEARCH_PLAN_DIR", "")  # measure() sets its own
    spec = importlib.util.spec_from_file_location("keep_gap", ROOT / "benchmarks" / "keep_gap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "keep_gap", module)
    spec.loader.exec_module(module)
    return module


def test_after_discards_a_speculation_costs_a_claim_and_a_release_per_run(
    tmp_path: Path, keep_gap: ModuleType
) -> None:
    runs, calls = 4, {}
    for speculate in (False, True):
        root = tmp_path / str(speculate)
        root.mkdir()
        measure = partial(keep_gap.measure, root, runs, 0.3, 0.0, speculate, keep=False)
        gaps, calls[speculate] = anyio.run(measure)
        assert len(gaps) == runs - 2  # the baseline's gap is left out
        assert calls[speculate]["publish"] >= runs - 1 and calls[speculate]["get_best"] > 0
    # The baseline gets no speculation; each run after it does, and each is released.
    extra = runs - 2
    assert calls[True]["claim"] - calls[False]["claim"] >= extra
    assert calls[True]["release"] - calls[False]["release"] >= extra
