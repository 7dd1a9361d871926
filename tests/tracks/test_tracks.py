"""Track lookup: built-in names, ``text:<path>``, one-line errors for the rest, and bounds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from autoresearchd.errors import DataError
from autoresearchd.tracks import TRACKS, get_track
from autoresearchd.tracks.definitions import CEILING_BPB, score_bounds


def test_builtin_tracks_evaluate_whole_windows() -> None:
    for track in TRACKS.values():
        assert track.eval_tokens % track.seq_len == 0
        assert track.budget_s > 0


def test_synthetic_track_is_generated_and_shakespeare_is_pinned() -> None:
    assert get_track("synthetic").markov is not None
    shakespeare = get_track("shakespeare")
    assert shakespeare.url.startswith("https://")
    assert len(shakespeare.sha256) == 64


def test_text_track_resolves_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    track = get_track("text:corpus.txt")
    assert track.kind == "text"
    assert track.path == tmp_path / "corpus.txt"
    assert track.name == f"text:{tmp_path / 'corpus.txt'}"
    assert "/" not in track.dirname and track.dirname.startswith("text-corpus")


def test_unknown_track_names_the_known_ones() -> None:
    with pytest.raises(DataError) as info:
        get_track("imagenet")
    assert str(info.value) == (
        "track imagenet: unknown track 'imagenet' (known: synthetic, shakespeare, text:<path>)"
    )


def test_text_track_without_path_is_refused() -> None:
    with pytest.raises(DataError, match="needs a path"):
        get_track("text:")


def test_the_synthetic_floor_is_its_entropy_rate_less_evaluation_noise() -> None:
    """H(0.5, 0.25, 0.125, 0.125) = 1.75 bits; six standard errors of the mean log-loss
    over 2**17 evaluation tokens (sd 0.829 per token) sit 0.0137 below it."""
    floor, ceiling = score_bounds("synthetic")
    assert floor == pytest.approx(1.75 - 6 * math.sqrt(0.6875 / 2**17))
    assert ceiling == CEILING_BPB
    assert score_bounds("no-such-track") == (0.0, CEILING_BPB)
    assert score_bounds("text:/tmp/corpus.txt")[0] == 0.0
