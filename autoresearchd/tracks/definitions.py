"""Track definitions: what a run trains on and how it is scored.

A track is a dataset plus a sequence length, a fixed number of evaluation tokens and a
default time budget, and the bounds a plausible val_bpb lies within. Results are only
compared within a track. ``get_track`` resolves the built-in names and ``text:<path>`` for
a local corpus; ``score_bounds`` gives any track name's bounds. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoresearchd.config import DEFAULT_TIME_BUDGET_S
from autoresearchd.errors import DataError
from autoresearchd.statedir import DEFAULT_STATE_DIR, StateDir
from autoresearchd.tracks.markov import MarkovSpec, entropy_bits

#: Where prepared data lives unless told otherwise; matches the config's ``<state_dir>/data``.
DEFAULT_DATA_DIR = StateDir(DEFAULT_STATE_DIR).data
TEXT_PREFIX = "text:"
#: Share of a text corpus (its tail) held out for validation.
VAL_FRACTION = 0.1
TEXT_SEQ_LEN = 256
TEXT_EVAL_TOKENS = 2**16

#: Standard deviations of the evaluation's sampling error a perfect model may score below
#: the entropy rate on a finite evaluation set; beyond that the score is not credible.
FLOOR_SIGMAS = 6.0
#: A byte-level model that predicts worse than uniform over 256 values at this multiple is
#: broken, not merely bad: no honest run reports it as a result.
CEILING_BPB = 64.0

SourceKind = Literal["synthetic", "url", "text"]


@dataclass(frozen=True, slots=True)
class Track:
    """One benchmark: dataset, sequence length, evaluation size and default budget.

    ``eval_tokens`` is a multiple of ``seq_len``; for ``text`` tracks it is an upper
    bound, lowered at preparation time when the corpus is small. ``floor_bpb`` and
    ``ceiling_bpb`` bound a plausible score: a synthetic track's floor is its source's
    entropy rate less :data:`FLOOR_SIGMAS` of evaluation noise (:func:`entropy_floor`).
    """

    name: str
    kind: SourceKind
    seq_len: int
    eval_tokens: int
    budget_s: float = DEFAULT_TIME_BUDGET_S
    markov: MarkovSpec | None = None  # synthetic: the source
    train_tokens: int = 0  # synthetic: how many to generate
    url: str = ""  # url: where the corpus is
    sha256: str = ""  # url: the corpus's pinned checksum
    path: Path | None = None  # text: the local corpus
    floor_bpb: float = 0.0  # no honest val_bpb is below this
    ceiling_bpb: float = CEILING_BPB  # nor above this

    @property
    def dirname(self) -> str:
        """The folder under the data dir; ``text:`` names are made path-safe and unique."""
        if self.kind != "text":
            return self.name
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.path.stem if self.path else "corpus")
        digest = hashlib.sha256(str(self.path).encode("utf-8")).hexdigest()[:8]
        return f"text-{stem}-{digest}"


def entropy_floor(spec: MarkovSpec, eval_tokens: int) -> float:
    """The lowest val_bpb an honest run can score on ``eval_tokens`` of ``spec``'s source.

    Even the source itself, as a model, scores its entropy rate only on average: the mean
    of ``-log2 p`` over a finite evaluation set has a standard deviation of
    ``sqrt(Var[-log2 p] / eval_tokens)``. The floor sits :data:`FLOOR_SIGMAS` of it below.
    """
    rate = entropy_bits(spec.probs)
    variance = sum(p * (-math.log2(p) - rate) ** 2 for p in spec.probs)
    return rate - FLOOR_SIGMAS * math.sqrt(variance / eval_tokens)


SYNTHETIC_SPEC = MarkovSpec(
    alphabet=b"abcdefghijklmnopqrstuvwxyz .,;!?",
    fanouts=(16, 8, 4),
    probs=(0.5, 0.25, 0.125, 0.125),
    seed=20240611,
)
SYNTHETIC_EVAL_TOKENS = 2**17
SYNTHETIC = Track(
    name="synthetic",
    kind="synthetic",
    seq_len=256,
    eval_tokens=SYNTHETIC_EVAL_TOKENS,
    markov=SYNTHETIC_SPEC,
    train_tokens=2**23,
    floor_bpb=entropy_floor(SYNTHETIC_SPEC, SYNTHETIC_EVAL_TOKENS),
)

# The checksum of karpathy/char-rnn's data/tinyshakespeare/input.txt (1,115,394 bytes),
# as pinned independently by many public projects that download this exact URL.
SHAKESPEARE = Track(
    name="shakespeare",
    kind="url",
    seq_len=256,
    eval_tokens=2**16,
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)

TRACKS: dict[str, Track] = {track.name: track for track in (SYNTHETIC, SHAKESPEARE)}


def get_track(name: str) -> Track:
    """The track called ``name``: a built-in one or ``text:<path>``."""
    if name.startswith(TEXT_PREFIX):
        return text_track(name[len(TEXT_PREFIX) :])
    track = TRACKS.get(name)
    if track is None:
        known = ", ".join([*TRACKS, "text:<path>"])
        raise DataError(f"unknown track {name!r} (known: {known})", track=name)
    return track


def text_track(path: str) -> Track:
    """A track over a local text file; the path is resolved so the name is stable."""
    if not path.strip():
        raise DataError("text track needs a path, e.g. text:corpus.txt", track=TEXT_PREFIX)
    resolved = Path(path).expanduser().resolve()
    return Track(
        name=f"{TEXT_PREFIX}{resolved}",
        kind="text",
        seq_len=TEXT_SEQ_LEN,
        eval_tokens=TEXT_EVAL_TOKENS,
        path=resolved,
    )


def score_bounds(name: str) -> tuple[float, float]:
    """``(floor, ceiling)`` of a plausible val_bpb on track ``name``.

    A track this version does not know (a newer one, or a typo) is bounded only by being
    positive and below :data:`CEILING_BPB`: its floor cannot be known here.
    """
    try:
        track = get_track(name)
    except DataError:
        return 0.0, CEILING_BPB
    return track.floor_bpb, track.ceiling_bpb
