"""``autoresearchd prepare``: where the data went, the synthetic floor, one-line errors."""

from __future__ import annotations

from pathlib import Path

from .daemon_process import cli

ROOT = Path(__file__).resolve().parent.parent


def test_prepare_synthetic_prints_path_and_entropy_floor(tmp_path: Path) -> None:
    result = cli("prepare", "--track", "synthetic", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"synthetic: {tmp_path / 'synthetic'}"
    assert "entropy_floor_bpb: 1.750000" in lines
    assert (tmp_path / "synthetic" / "train.bin").stat().st_size == 2**23


def test_prepare_text_track_has_no_floor(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n" * 500)
    result = cli("prepare", "--track", f"text:{corpus}", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"text:{corpus}: {tmp_path / 'd'}/text-corpus-")
    assert "entropy_floor" not in result.stdout


def test_unknown_track_is_a_one_line_error(tmp_path: Path) -> None:
    result = cli("prepare", "--track", "nope", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "autoresearchd: track nope: unknown track 'nope' (known: synthetic, shakespeare, "
        "text:<path>)"
    ]
