"""``autoresearchd trust-check``: exit 0 accepted, 1 refused with the reason, 2 unreadable."""

import random
from pathlib import Path

from autoresearchd.hyperparams import parse_params
from autoresearchd.mutation import apply_changes, sample_changes

from .daemon_process import cli

BASELINE = Path(__file__).parent / "fixtures" / "annotated_train.py"


def test_help_lists_trust_check() -> None:
    assert "trust-check" in cli("--help").stdout


def test_a_mutated_candidate_passes_with_exit_0(tmp_path: Path) -> None:
    source = BASELINE.read_text(encoding="utf-8")
    changes = sample_changes(parse_params(source), random.Random(4), 3)
    candidate = tmp_path / "train.py"
    candidate.write_text(apply_changes(source, changes), encoding="utf-8")
    result = cli("trust-check", BASELINE, candidate)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{candidate}: ok\n", "")


def test_a_refused_candidate_prints_line_and_change_and_exits_1(tmp_path: Path) -> None:
    candidate = tmp_path / "train.py"
    source = BASELINE.read_text(encoding="utf-8")
    candidate.write_text(source.replace("MATRIX_LR = 0.04 ", "MATRIX_LR = 0.9 "), encoding="utf-8")
    result = cli("trust-check", BASELINE, candidate)
    assert result.returncode == 1
    assert result.stdout == f"{candidate}: line 13: MATRIX_LR: 0.9 is outside log 0.005..0.2\n"


def test_an_unreadable_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.py"
    result = cli("trust-check", BASELINE, missing)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"autoresearchd: {missing}: cannot read: No such file or directory"
    ]
    binary = tmp_path / "binary.py"
    binary.write_bytes(b"\xff\xfe\x00junk")
    result = cli("trust-check", binary, BASELINE)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"autoresearchd: {binary}: not UTF-8 text"]


def test_a_malformed_baseline_is_named_and_exits_2(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.py"
    baseline.write_text("LR = 0.9  # search: log 0.005..0.2\n", encoding="utf-8")
    result = cli("trust-check", baseline, BASELINE)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"autoresearchd: {baseline}: line 1: LR: 0.9 is outside log 0.005..0.2"
    ]
