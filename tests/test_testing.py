"""The scripted train.py stand-ins: valid scripts with a mutable block and a meaningful val_bpb."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from autoresearchd.summary import parse_summary_text
from autoresearchd.testing import (
    crash_script,
    env_dump_script,
    flood_script,
    hang_script,
    json_result_script,
    karpathy_output_script,
    nan_script,
    ok_script,
    stand_in_val_bpb,
    write_workspace,
)

FACTORIES: list[Callable[[], str]] = [
    ok_script,
    crash_script,
    hang_script,
    nan_script,
    lambda: flood_script(1),
    json_result_script,
    karpathy_output_script,
    env_dump_script,
]


def _run(source: str, tmp_path: Path, seed: int) -> float | None:
    script = tmp_path / "train.py"
    script.write_text(source)
    env = {**os.environ, "AUTORESEARCH_SEED": str(seed)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, check=True
    )
    summary = parse_summary_text(done.stdout)
    assert summary is not None
    return summary.val_bpb


@pytest.mark.parametrize("factory", FACTORIES)
def test_every_stand_in_has_the_annotated_hyperparameter_block(
    factory: Callable[[], str],
) -> None:
    tree = ast.parse(factory())
    assigned = {
        node.targets[0].id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    lines = factory().splitlines()

    assert {"LR", "WIDTH", "BATCH_SIZE"} <= assigned
    assert "LR = 0.01  # search: log 0.001..0.1" in lines
    assert "WIDTH = 64  # search: int 16..256" in lines
    assert "BATCH_SIZE = 2**5  # search: pow2 3..9" in lines


def test_objective_is_lowest_at_its_optimum_and_noise_follows_the_seed() -> None:
    assert stand_in_val_bpb(0.02, 128, 64, seed=1, noise=0.0) == 2.0
    assert stand_in_val_bpb(0.01, 64, 32, seed=1, noise=0.0) > 2.1
    noisy = [stand_in_val_bpb(0.02, 128, 64, seed=s, noise=0.003) for s in range(20)]
    assert len(set(noisy)) == 20
    assert all(abs(v - 2.0) < 0.02 for v in noisy)
    assert stand_in_val_bpb(0.02, 128, 64, 5, 0.003) == stand_in_val_bpb(0.02, 128, 64, 5, 0.003)


def test_ok_script_reports_the_objective_of_its_own_hyperparameters(tmp_path: Path) -> None:
    near = _run(ok_script(lr=0.02, width=128, batch_pow=6, noise=0.0), tmp_path, seed=3)
    far = _run(ok_script(noise=0.0), tmp_path, seed=3)
    seeded = _run(ok_script(), tmp_path, seed=3)

    assert near == 2.0
    assert far == pytest.approx(stand_in_val_bpb(0.01, 64, 32, 3, 0.0), abs=1e-6)
    assert seeded == pytest.approx(stand_in_val_bpb(0.01, 64, 32, 3, 0.003), abs=1e-6)


def test_write_workspace_writes_train_py_and_extra_files(tmp_path: Path) -> None:
    path = write_workspace(tmp_path / "ws", "print(1)\n", files={"a/b.txt": "x", "c.bin": b"\x00"})

    assert (path / "train.py").read_text() == "print(1)\n"
    assert (path / "a" / "b.txt").read_text() == "x"
    assert (path / "c.bin").read_bytes() == b"\x00"
