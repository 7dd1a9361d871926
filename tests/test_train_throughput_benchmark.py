"""benchmarks/train_throughput.py's share mode: the copy of train.py it runs keeps the model's
and the batch's sizes out of the search, so every run does the same work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from autoresearchd.hyperparams import parse_params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = ROOT / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pinned_shapes_cannot_move_on_any_device(bench: ModuleType) -> None:
    source = (ROOT / "train.py").read_text(encoding="utf-8")
    before = parse_params(source)
    params = parse_params(bench.pin_shapes(source))
    for name in bench.SHAPES:
        assert params[name].value == before[name].value
        # An unmarked parameter would get an inferred space, which moves it.
        assert not params[name].movable_on("cpu"), name
        assert not params[name].movable_on("cuda"), name


def test_the_optimiser_is_still_searched(bench: ModuleType) -> None:
    params = parse_params(bench.pin_shapes((ROOT / "train.py").read_text(encoding="utf-8")))
    assert params["MATRIX_LR"].movable_on("cpu")
    assert params["WARMDOWN_FRAC"].movable_on("cpu")
