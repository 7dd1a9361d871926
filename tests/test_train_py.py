"""The reference train.py as the daemon runs it: environment in, summary out, fast failure."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from autoresearchd.early_stopping import LearningCurve
from autoresearchd.hyperparams import parse_params
from autoresearchd.models import KNOWN_METRICS, Summary
from autoresearchd.summary import parse_result_json, parse_summary_text
from autoresearchd.tracks import prepare_track
from autoresearchd.tracks.tokenizer import VOCAB_SIZE

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


def run_train(
    script: Path,
    data_dir: Path,
    out: Path,
    budget: float,
    command: tuple[str, ...] | None = None,
    **extra: str,
) -> Run:
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
        command or [sys.executable, script.name],
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
    # The last step ends past the budget, by at most about one step (on a busy machine one
    # step can take seconds, so the slack is the run's own mean step, twice over).
    training, steps = metrics["training_seconds"], metrics["num_steps"]
    assert LONGER_S <= training < LONGER_S + 2 * training / steps + 0.5
    assert "warmup_seconds" in metrics
    assert metrics["total_seconds"] >= metrics["training_seconds"] + metrics["warmup_seconds"]


@pytest.mark.slow
def test_summary_gives_throughput_and_compile_time(longer_run: Run) -> None:
    # The result file holds full precision; the printed block rounds to 0.0 M tokens on CPU.
    metrics = json.loads(longer_run.result_file.read_text(encoding="utf-8"))
    tokens_per_s = metrics["total_tokens_M"] * 1e6 / metrics["training_seconds"]
    assert metrics["tokens_per_s"] == pytest.approx(tokens_per_s)
    assert 0 < metrics["compile_seconds"] <= metrics["warmup_seconds"]
    assert metrics["peak_tflops"] == 0.0 and metrics["mfu_percent"] == 0.0  # no peak on CPU


#: Runs train.py as __main__, with an exit hook that shows whether the interpreter tore down.
TEARDOWN_PROBE = (
    "import atexit, runpy, sys; "
    "atexit.register(lambda: print('interpreter teardown ran', flush=True)); "
    "sys.argv = ['train.py']; runpy.run_path('train.py', run_name='__main__')"
)


@pytest.mark.slow
def test_eager_run_never_imports_dynamo_and_exits_without_teardown(
    tmp_path: Path, data_dir: Path
) -> None:
    """torch.optim imports torch._dynamo (about a second) and teardown costs more: the CPU
    path does neither, and its summary and result file are complete all the same."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN_PY.read_text(encoding="utf-8"), encoding="utf-8")
    probe = (sys.executable, "-X", "importtime", "-c", TEARDOWN_PROBE)
    run = run_train(script, data_dir, tmp_path, budget=1.0, command=probe)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "import time:" in run.stderr and " torch.nn" in run.stderr  # the probe works
    assert "torch._dynamo" not in run.stderr
    assert "interpreter teardown ran" not in run.stdout
    assert run.summary is not None and run.summary.val_bpb is not None
    from_json = parse_result_json(run.result_file.read_text(encoding="utf-8"))
    assert from_json is not None and from_json.val_bpb == pytest.approx(run.summary.val_bpb)


@pytest.fixture(scope="module")
def train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_train", TRAIN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_on_cpu_the_warm_up_is_done_before_the_go_wait(
    train_module: ModuleType, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU holds no accelerator, so a standby warms up before its turn; the run after go
    trains from the same restored weights as ever."""
    calls: list[str] = []
    warm_up = train_module.warm_up

    def recorded_warm_up(trainer: object, steps: int) -> tuple[float, float]:
        calls.append("warm_up")
        return warm_up(trainer, steps)  # type: ignore[no-any-return]

    def recorded_wait() -> float:
        calls.append("wait_for_go")
        return 0.0

    monkeypatch.setattr(train_module, "warm_up", recorded_warm_up)
    monkeypatch.setattr(train_module, "wait_for_go", recorded_wait)
    env = {
        "AUTORESEARCH_DEVICE": "cpu",
        "AUTORESEARCH_TIME_BUDGET": "0.3",
        "AUTORESEARCH_DATA_DIR": str(data_dir),
    }
    summary = train_module.run(train_module.read_settings(env))
    assert calls == ["warm_up", "wait_for_go"]
    assert summary["warmup_seconds"] > 0 and summary["num_steps"] >= 1


def test_eager_adamw_matches_torch_adamw(train_module: ModuleType) -> None:
    import torch

    shape = train_module.choose_shape(torch.device("cpu"), 16)
    ours, theirs = train_module.GPT(shape), train_module.GPT(shape)
    theirs.load_state_dict(ours.state_dict())
    mine = train_module.make_optimizer(ours, compiled=False)
    assert type(mine).__name__ == "ForeachAdamW"
    groups = [
        {"params": list(group["params"]), "lr": group["lr"], "weight_decay": group["weight_decay"]}
        for group in train_module.make_optimizer(theirs, compiled=False).param_groups
    ]
    reference = torch.optim.AdamW(groups, betas=mine.betas, eps=mine.eps, foreach=True)
    batch = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(3))
    for _ in range(5):
        for model, optimizer in ((ours, mine), (theirs, reference)):
            logits = model(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, 256), batch[:, 1:].reshape(-1)
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[name], rtol=1e-5, atol=1e-7)
    moved = ours.blocks[0].attn.proj.weight  # starts at zero, so any step shows
    assert moved.abs().max() > 0


def test_flops_per_token_is_6n_plus_attention(train_module: ModuleType) -> None:
    """karpathy/autoresearch's estimate: 6 per non-embedding weight, 12·depth·width·seq_len."""
    import torch

    model = train_module.GPT(train_module.choose_shape(torch.device("cpu"), 64))
    width, depth, ratio = model.head.in_features, len(model.blocks), train_module.MLP_RATIO
    weights = depth * (4 * width**2 + 2 * ratio * width**2) + 256 * width  # blocks + head
    assert model.flops_per_token() == 6 * weights + 12 * depth * width * 64


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 3090 Ti", 80.0),
    ],
)
def test_peak_flops_by_device_name(train_module: ModuleType, name: str, tflops: float) -> None:
    assert train_module.peak_flops_for(name) == pytest.approx(tflops * 1e12)


def test_unknown_device_has_no_peak(train_module: ModuleType) -> None:
    assert train_module.peak_flops_for("Some Future Accelerator") is None


@pytest.mark.slow
def test_result_file_holds_the_printed_summary(longer_run: Run) -> None:
    from_json = parse_result_json(longer_run.result_file.read_text(encoding="utf-8"))
    assert from_json is not None and longer_run.summary is not None
    assert from_json.val_bpb == pytest.approx(longer_run.summary.val_bpb, abs=1e-6)
    assert set(from_json.metrics) == set(longer_run.summary.metrics)


@pytest.mark.slow
def test_progress_lines_make_a_learning_curve(longer_run: Run) -> None:
    """The JSON progress channel: the daemon's reader gets a curve over the whole budget."""
    curve = LearningCurve(LONGER_S)
    curve.feed(longer_run.stdout.encode())
    points = curve.points()
    assert "AUTORESEARCH_PROGRESS {" in longer_run.stdout
    assert curve.fraction == 1.0 and len(points) >= 2
    assert all(0 < loss < 2 * math.log(VOCAB_SIZE) for _, loss in points)
    assert [f for f, _ in points] == sorted(f for f, _ in points)


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
