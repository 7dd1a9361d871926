"""Preparing tracks: deterministic, idempotent, torch-free, with one-line errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoresearchd.errors import DataError
from autoresearchd.tracks import PreparedTrack, get_track, prepare, prepare_track


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synthetic_track_has_its_sizes_and_floor(synthetic: PreparedTrack) -> None:
    track = get_track("synthetic")
    assert synthetic.train_tokens == track.train_tokens
    assert synthetic.eval_tokens == track.eval_tokens
    assert synthetic.val_tokens == track.eval_tokens + 1
    assert synthetic.entropy_floor_bpb == 1.75
    assert synthetic.train_file.stat().st_size == synthetic.train_tokens


def test_synthetic_data_is_identical_on_every_machine(
    synthetic: PreparedTrack, tmp_path: Path
) -> None:
    again = prepare_track("synthetic", tmp_path)
    assert _digest(again.train_file) == _digest(synthetic.train_file)
    assert _digest(again.val_file) == _digest(synthetic.val_file)


def test_preparing_again_is_fast_and_returns_the_same(
    synthetic: PreparedTrack, synthetic_data_dir: Path
) -> None:
    start = time.perf_counter()
    again = prepare_track("synthetic", synthetic_data_dir)
    assert time.perf_counter() - start < 0.05
    assert again == synthetic


def test_truncated_data_is_rebuilt(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"to be or not to be " * 200)
    first = prepare_track(f"text:{corpus}", tmp_path / "data")
    first.train_file.write_bytes(b"short")
    again = prepare_track(f"text:{corpus}", tmp_path / "data")
    assert again.train_file.stat().st_size == first.train_tokens


def test_text_track_holds_out_its_tail(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    data = bytes(range(256)) * 40
    corpus.write_bytes(data)
    prepared = prepare_track(f"text:{corpus}", tmp_path / "data")
    assert prepared.train_file.read_bytes() + prepared.val_file.read_bytes() == data
    assert prepared.val_tokens == len(data) // 10
    assert prepared.eval_tokens == 3 * 256  # whole windows that fit the held-out tail
    assert prepared.entropy_floor_bpb is None


def test_edited_text_corpus_is_prepared_again(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"a" * 5000)
    prepare_track(f"text:{corpus}", tmp_path / "data")
    corpus.write_bytes(b"b" * 6000)
    prepared = prepare_track(f"text:{corpus}", tmp_path / "data")
    assert prepared.train_tokens + prepared.val_tokens == 6000
    assert set(prepared.train_file.read_bytes()) == {ord("b")}


def test_too_small_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_bytes(b"hello")
    with pytest.raises(DataError) as info:
        prepare_track(f"text:{corpus}", tmp_path / "data")
    assert str(info.value) == f"track text:{corpus}: corpus has 5 bytes, needs at least 514"


def test_missing_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="No such file"):
        prepare(get_track(f"text:{tmp_path / 'absent.txt'}"), tmp_path)


def test_preparation_never_imports_torch(tmp_path: Path) -> None:
    """The daemon prepares data, and the daemon must never load torch."""
    code = (
        "import sys; from pathlib import Path; import autoresearchd.cli;"
        "from autoresearchd.tracks import prepare_track;"
        f"prepare_track('text:{tmp_path / 'c.txt'}', Path({str(tmp_path)!r}));"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    (tmp_path / "c.txt").write_bytes(b"x" * 4000)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
