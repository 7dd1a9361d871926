"""The fixed harness that every train.py relies on, like karpathy/autoresearch's prepare.py.

It owns what must stay identical across experiments so results compare: the byte-level
tokenizer, the track definitions (dataset, sequence length, evaluation tokens, default
budget), data preparation, the training-batch sampler and ``evaluate_bpb``. This package
and its preparation modules never import torch, so the daemon can prepare data without
loading it; only :mod:`autoresearchd.harness.data` and :mod:`autoresearchd.harness.evaluation`
(used by train.py) do.
"""

from autoresearchd.harness.prepare import PreparedTrack, prepare, prepare_track
from autoresearchd.harness.tracks import DEFAULT_DATA_DIR, TRACKS, Track, get_track

__all__ = [
    "DEFAULT_DATA_DIR",
    "TRACKS",
    "PreparedTrack",
    "Track",
    "get_track",
    "prepare",
    "prepare_track",
]
