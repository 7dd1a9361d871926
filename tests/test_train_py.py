"""The reference train.py as the daemon runs it: environment in, summary out, fast failure."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoresearchd.harness import prepare_track
from autoresearchd.models import KNOWN_METRICS, Summary
from autoresearchd.mutation import parse_params
from autoresearchd.summary import parse_result_json, parse_summary_text

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PY = ROOT / "train.py"
UNTRAINED_BPB = 8.0


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    summary: Summary | None
    result_file: Path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    prepare_track("synthetic", path)
    return path


def run_train(script: Path, data_dir: Path, out: Path, budget: float, **extra: str) -> Run:
    result_file = out / f"result-{budget}.json"
    env = {
        **os.environ,
        "AUTORESEARCH_DEVICE": "cpu",
        "AUTORESEARCH_TIME_BUDGET": str(budget),
        "AUTORESEARCH_SEED": "1",
        "AUTORESEARCH_TRACK": "synthetic",
        "AUTORESEARCH_DATA_DIR": str(data_dir),
        "AUTORESEARCH_RESULT_FILE": str(result_file),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    proc = subprocess.run(
        [sys.executable, script.name],
        cwd=script.parent,
        env=env,
        capture_output=True,
        timeout=90,
        check=False,
    )
    # Decoded by hand: text mode would turn the \r of progress lines into \n.
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    return Run(proc.returncode, stdout, stderr, parse_summary_text(stdout), result_file)


@pytest.fixture(scope="module")
def short_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(TRAIN_PY, data_dir, tmp_path_factory.mktemp("short"), budget=1.0)


#: The longer run's budget: the issue's example, and enough to learn on a busy machine.
LONGER_S = 8.0


@pytest.fixture(scope="module")
def longer_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_train(TRAIN_PY, data_dir, tmp_path_factory.mktemp("longer"), budget=LONGER_S)


@pytest.mark.slow
def test_summary_parses_with_every_known_key(longer_run: Run, data_dir: Path) -> None:
    assert longer_run.returncode == 0, longer_run.stderr
    assert "\r" in longer_run.stdout, "progress is redrawn in place"
    summary = longer_run.summary
    assert summary is not None and summary.val_bpb is not None
    assert set(KNOWN_METRICS) - {"val_bpb"} <= set(summary.metrics)
    floor = prepare_track("synthetic", data_dir).entropy_floor_bpb
    # How far 8 s of training gets depends on the machine's load (three steps on a busy
    # one); that it learns is checked against a shorter budget below.
    assert floor is not None and floor < summary.val_bpb < UNTRAINED_BPB
    assert summary.metrics["depth"] >= 1 and summary.metrics["num_steps"] > 0


@pytest.mark.slow
def test_training_time_is_the_budget_and_warmup_is_apart(longer_run: Run) -> None:
    assert longer_run.summary is not None
    metrics = longer_run.summary.metrics
    # The last step ends past the budget; on a busy machine one step can take a while.
    assert LONGER_S <= metrics["training_seconds"] < 1.5 * LONGER_S
    assert "warmup_seconds" in metrics
    assert metrics["total_seconds"] >= metrics["training_seconds"] + metrics["warmup_seconds"]


@pytest.mark.slow
def test_result_file_holds_the_printed_summary(longer_run: Run) -> None:
    from_json = parse_result_json(longer_run.result_file.read_text(encoding="utf-8"))
    assert from_json is not None and longer_run.summary is not None
    assert from_json.val_bpb == pytest.approx(longer_run.summary.val_bpb, abs=1e-6)
    assert set(from_json.metrics) == set(longer_run.summary.metrics)


@pytest.mark.slow
def test_a_longer_budget_gives_a_lower_val_bpb(short_run: Run, longer_run: Run) -> None:
    assert short_run.summary is not None and longer_run.summary is not None
    assert short_run.summary.val_bpb is not None and longer_run.summary.val_bpb is not None
    assert longer_run.summary.val_bpb < short_run.summary.val_bpb - 0.2


@pytest.mark.slow
def test_absurd_learning_rate_fails_fast_with_nonzero_exit(tmp_path: Path, data_dir: Path) -> None:
    source = TRAIN_PY.read_text(encoding="utf-8")
    edited, count = re.subn(r"^MATRIX_LR = [^ ]+", "MATRIX_LR = 1e6", source, flags=re.M)
    assert count == 1
    script = tmp_path / "train.py"
    script.write_text(edited, encoding="utf-8")
    run = run_train(script, data_dir, tmp_path, budget=60.0)
    assert run.returncode == 1
    assert "FAIL: training diverged" in run.stderr
    assert run.summary is None
    # The loss is checked every step: failure comes long before the 60 s budget.
    assert not run.result_file.exists()


@pytest.mark.slow
def test_bad_environment_is_a_one_line_error(tmp_path: Path, data_dir: Path) -> None:
    run = run_train(TRAIN_PY, data_dir, tmp_path, budget=1.0, AUTORESEARCH_DEVICE="tpu")
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: AUTORESEARCH_DEVICE: expected cuda or cpu, got 'tpu'"]


def _hyperparameters() -> list[ast.Assign]:
    tree = ast.parse(TRAIN_PY.read_text(encoding="utf-8"))
    return [
        node
        for node in tree.body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.isupper()
    ]


def _is_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _is_literal(node.left) and _is_literal(node.right)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.literal_eval(node)
        except ValueError:
            return False
    return True


def test_every_annotated_hyperparameter_is_a_literal() -> None:
    """The mutator edits literals only, so every searched name must hold one."""
    lines = TRAIN_PY.read_text(encoding="utf-8").splitlines()
    annotated = [node for node in _hyperparameters() if "# search:" in lines[node.lineno - 1]]
    assert len(annotated) >= 15
    for node in annotated:
        assert _is_literal(node.value), lines[node.lineno - 1]
        spec = lines[node.lineno - 1].split("# search:")[1].split()
        assert spec[0] in ("log", "int", "pow2", "choice"), lines[node.lineno - 1]


def test_batch_sizes_are_powers_of_two() -> None:
    for node in _hyperparameters():
        name = node.targets[0].id  # type: ignore[attr-defined]
        if name.endswith("BATCH_SIZE"):
            assert isinstance(node.value, ast.BinOp) and isinstance(node.value.op, ast.Pow), name


def _reads_by_device() -> dict[str, set[str]]:
    """Where train.py reads each name: ``cpu``/``cuda`` in choose_shape's branches, else ``any``."""
    tree = ast.parse(TRAIN_PY.read_text(encoding="utf-8"))
    shape = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "choose_shape"
    )
    branch = next(n for n in shape.body if isinstance(n, ast.If))
    assert ast.unparse(branch.test) == "device.type == 'cpu'"
    kind_of: dict[int, str] = {}
    for kind, body in (("cpu", branch.body), ("cuda", branch.orelse)):
        kind_of.update({id(node): kind for stmt in body for node in ast.walk(stmt)})
    reads: dict[str, set[str]] = defaultdict(set)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            reads[node.id].add(kind_of.get(id(node), "any"))
    return reads


def test_device_qualifiers_match_where_train_py_reads_each_parameter() -> None:
    """A parameter read on one device only says so, and one read on both says nothing."""
    reads = _reads_by_device()
    params = parse_params(TRAIN_PY.read_text(encoding="utf-8"))
    for name, param in params.items():
        only = {frozenset({"cpu"}): "cpu", frozenset({"cuda"}): "cuda"}.get(frozenset(reads[name]))
        assert param.space.device == only, name
    on_cpu = {name for name, param in params.items() if param.space.device == "cpu"}
    assert on_cpu == {name for name in params if name.startswith("CPU_")} != set()
    assert params["DEVICE_BATCH_SIZE"].space.device == "cuda"
    assert params["TOTAL_BATCH_SIZE"].space.device == "cuda"


def test_result_json_is_plain_numbers(longer_run: Run) -> None:
    data = json.loads(longer_run.result_file.read_text(encoding="utf-8"))
    assert all(isinstance(value, int | float) for value in data.values())
