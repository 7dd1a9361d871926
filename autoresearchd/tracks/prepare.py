"""Prepare a track's data on disk, idempotently and without torch.

Layout under ``<data_dir>/<track.dirname>/``: ``train.bin`` and ``val.bin`` hold raw
tokens (one byte each, see :mod:`autoresearchd.tracks.tokenizer`) and ``meta.json``
describes them. ``meta.json`` is written last, so its presence with a matching
fingerprint means the data is complete; a second call returns at once. The daemon calls
:func:`prepare_track` before runs; train.py calls it too, so a bare run works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from autoresearchd.errors import DataError
from autoresearchd.fsutil import write_atomically
from autoresearchd.tracks.definitions import VAL_FRACTION, Track, get_track
from autoresearchd.tracks.markov import MarkovSource

log = structlog.get_logger(__name__)

LAYOUT_VERSION = 1
META = "meta.json"
TRAIN_FILE = "train.bin"
VAL_FILE = "val.bin"


@dataclass(frozen=True, slots=True)
class PreparedTrack:
    """A track whose data is on disk and ready to train on."""

    name: str
    path: Path  # the folder holding train.bin, val.bin and meta.json
    train_tokens: int
    val_tokens: int
    eval_tokens: int
    seq_len: int
    entropy_floor_bpb: float | None  # known only for synthetic sources

    @property
    def train_file(self) -> Path:
        return self.path / TRAIN_FILE

    @property
    def val_file(self) -> Path:
        return self.path / VAL_FILE


def prepare_track(track: str, data_dir: Path) -> PreparedTrack:
    """Prepare the track named ``track`` under ``data_dir``; fast when already done."""
    return prepare(get_track(track), data_dir)


def prepare(track: Track, data_dir: Path) -> PreparedTrack:
    """Prepare ``track`` under ``data_dir``; raise :class:`DataError` with one line on failure."""
    folder = Path(data_dir).expanduser() / track.dirname
    fingerprint = _fingerprint(track)
    existing = load_prepared(folder, fingerprint)
    if existing is not None:
        return existing
    try:
        folder.mkdir(parents=True, exist_ok=True)
        train, val, floor = _build(track, folder)
        prepared = _write(track, folder, fingerprint, train, val, floor)
    except OSError as exc:
        raise DataError(f"cannot write {folder}: {exc.strerror}", track=track.name) from None
    log.info("track_prepared", track=track.name, path=str(folder), train_tokens=len(train))
    return prepared


def load_prepared(folder: Path, fingerprint: dict[str, Any] | None = None) -> PreparedTrack | None:
    """The prepared track in ``folder``, or None when absent, partial or stale."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if fingerprint is not None and meta.get("fingerprint") != fingerprint:
            return None
        prepared = _from_meta(folder, meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    sizes_ok = (
        prepared.train_file.stat().st_size == prepared.train_tokens
        and prepared.val_file.stat().st_size == prepared.val_tokens
    )
    return prepared if sizes_ok else None


def _build(track: Track, folder: Path) -> tuple[bytes, bytes, float | None]:
    """The train and validation tokens of ``track`` and its entropy floor, if known."""
    if track.kind == "synthetic":
        return _synthetic(track)
    if track.kind == "url":
        # Imported here: every run's harness reads prepared tracks through this module, and
        # httpx would add about 80 ms to each run's start-up.
        from autoresearchd.tracks.download import download

        source = download(track.url, folder / "source.txt", sha256=track.sha256)
        return (*_split(source.read_bytes(), track), None)
    return (*_split(_read_text_corpus(track), track), None)


def _synthetic(track: Track) -> tuple[bytes, bytes, float]:
    assert track.markov is not None, "a synthetic track carries its source"
    source = MarkovSource(track.markov)
    # The validation tail continues the training chain; it holds exactly what is evaluated.
    tokens = source.generate(track.train_tokens + track.eval_tokens + 1, seed=track.markov.seed)
    return tokens[: track.train_tokens], tokens[track.train_tokens :], source.entropy_rate_bits


def _read_text_corpus(track: Track) -> bytes:
    assert track.path is not None, "a text track carries its path"
    try:
        return track.path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {track.path}: {exc.strerror}", track=track.name) from None


def _split(data: bytes, track: Track) -> tuple[bytes, bytes]:
    """Hold out the tail of a corpus for validation; it must fit at least one window."""
    cut = len(data) - max(int(len(data) * VAL_FRACTION), track.seq_len + 1)
    if cut < track.seq_len + 1:
        need = 2 * (track.seq_len + 1)
        raise DataError(f"corpus has {len(data)} bytes, needs at least {need}", track=track.name)
    return data[:cut], data[cut:]


def _eval_tokens(track: Track, val_tokens: int) -> int:
    """The track's evaluation size, lowered to what a small validation split holds."""
    windows = min(track.eval_tokens, val_tokens - 1) // track.seq_len
    return windows * track.seq_len


def _write(
    track: Track,
    folder: Path,
    fingerprint: dict[str, Any],
    train: bytes,
    val: bytes,
    floor: float | None,
) -> PreparedTrack:
    write_atomically(folder / TRAIN_FILE, train)
    write_atomically(folder / VAL_FILE, val)
    prepared = PreparedTrack(
        name=track.name,
        path=folder,
        train_tokens=len(train),
        val_tokens=len(val),
        eval_tokens=_eval_tokens(track, len(val)),
        seq_len=track.seq_len,
        entropy_floor_bpb=floor,
    )
    meta = {"version": LAYOUT_VERSION, "fingerprint": fingerprint, **_meta_fields(prepared)}
    write_atomically(folder / META, json.dumps(meta, indent=2).encode("utf-8"))
    return prepared


def _meta_fields(prepared: PreparedTrack) -> dict[str, Any]:
    return {
        "name": prepared.name,
        "train_tokens": prepared.train_tokens,
        "val_tokens": prepared.val_tokens,
        "eval_tokens": prepared.eval_tokens,
        "seq_len": prepared.seq_len,
        "entropy_floor_bpb": prepared.entropy_floor_bpb,
    }


def _from_meta(folder: Path, meta: dict[str, Any]) -> PreparedTrack:
    floor = meta["entropy_floor_bpb"]
    return PreparedTrack(
        name=str(meta["name"]),
        path=folder,
        train_tokens=int(meta["train_tokens"]),
        val_tokens=int(meta["val_tokens"]),
        eval_tokens=int(meta["eval_tokens"]),
        seq_len=int(meta["seq_len"]),
        entropy_floor_bpb=None if floor is None else float(floor),
    )


def _fingerprint(track: Track) -> dict[str, Any]:
    """What the prepared data depends on; a change means it must be rebuilt."""
    base: dict[str, Any] = {"layout": LAYOUT_VERSION, "seq_len": track.seq_len}
    if track.kind == "synthetic" and track.markov is not None:
        spec = track.markov
        return base | {
            "markov": [spec.alphabet.hex(), list(spec.fanouts), list(spec.probs), spec.seed],
            "train_tokens": track.train_tokens,
            "eval_tokens": track.eval_tokens,
        }
    if track.kind == "url":
        return base | {"sha256": track.sha256, "eval_tokens": track.eval_tokens}
    return base | _text_fingerprint(track)


def _text_fingerprint(track: Track) -> dict[str, Any]:
    """A local corpus is re-split when its size or modification time changes."""
    assert track.path is not None, "a text track carries its path"
    try:
        stat = track.path.stat()
    except OSError as exc:
        raise DataError(f"cannot read {track.path}: {exc.strerror}", track=track.name) from None
    return {"path": str(track.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
