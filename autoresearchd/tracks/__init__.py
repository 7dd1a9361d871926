"""Tracks and their data, without torch: what a run trains on and how it is scored.

It owns what must stay identical across experiments so results compare, like
karpathy/autoresearch's prepare.py: the byte-level tokenizer, the track definitions
(dataset, sequence length, evaluation tokens, default budget, plausible scores), the
synthetic Markov source, downloads and data preparation. Nothing here imports torch, so
the daemon and the CLI prepare data and judge scores without loading it; the torch side
(loading the data onto the device, ``evaluate_bpb``) is :mod:`autoresearchd.harness`.
"""

from autoresearchd.tracks.definitions import DEFAULT_DATA_DIR, TRACKS, Track, get_track
from autoresearchd.tracks.prepare import PreparedTrack, prepare, prepare_track

__all__ = [
    "DEFAULT_DATA_DIR",
    "TRACKS",
    "PreparedTrack",
    "Track",
    "get_track",
    "prepare",
    "prepare_track",
]
