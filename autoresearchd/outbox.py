"""The durable outbox: every result lands on disk here before anything is sent.

One JSON file per result, written to a temporary name and renamed, so a result is
either wholly in the outbox or not at all. :meth:`Outbox.put` returns once the file is in
place, which already survives kill -9; the fsyncs that make it survive power loss too run
in :meth:`Outbox.sync`, which the publisher calls at once beside the worker's next run
(they are off the path between one run and the next) and which :meth:`Outbox.pending`
runs first, so no result is sent before it is on disk. A file leaves the outbox only
after the memory has acknowledged it; publishing is idempotent by result id, so a crash
between the two only causes a harmless replay.
Results the memory refuses for good move to ``failed/`` with the reason, never deleted;
at start-up, those whose reason was transient (a full disk, a busy database) come back.

The disk may refuse a write (full, read-only, over quota). Such a result is *held* in
memory: it is still pending, so the publisher can deliver it, and :meth:`Outbox.spill`
writes it out as soon as the disk takes it again. An entry that cannot be read back
(not JSON, not a record, a directory in its place) is set aside in ``failed/`` with its
reason, and the rest of the outbox carries on. All methods block briefly on the file
system; async callers run them in a thread, and a lock keeps concurrent callers apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from autoresearchd.errors import RunError
from autoresearchd.fsutil import TMP_SUFFIX, fsync_dir, fsync_file, write_atomically
from autoresearchd.models import Result, Status

log = structlog.get_logger(__name__)

_SUFFIX = ".json"
_REASON = ".reason"
#: What a parked result's reason says when its cause may have passed: such results are
#: retried at start-up (matched in lower case).
TRANSIENT_REASONS = (
    "database or disk is full",
    "disk i/o error",
    "database is busy",
    "database is locked",
    "no space left on device",
    "disk quota exceeded",
    "[errno 28]",
)
_FIELD_TYPES = typing.get_type_hints(Result)
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(Result)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


def is_transient_reason(reason: str) -> bool:
    """Whether a parked result's reason names a cause that passes (a full disk, a lock)."""
    lowered = reason.lower()
    return any(marker in lowered for marker in TRANSIENT_REASONS)


@dataclass(slots=True)
class _Held:
    """A result the disk refused; ``reason`` is set once the memory refused it too."""

    result: Result
    reason: str | None = None


class Outbox:
    """A folder of pending results, oldest first, plus those the disk could not take yet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failed_dir = root / "failed"
        self._held: dict[str, _Held] = {}
        # Entries that could be moved neither into failed/ nor read: skipped until restart.
        self._set_aside: dict[str, str] = {}
        self._lock = threading.RLock()
        #: Files put in place whose fsyncs have not run yet.
        self._unsynced: set[Path] = set()
        #: The latest reason the disk refused a write, while any result is held.
        self.last_error = ""

    def open(self) -> None:
        """Create the folders, clear interrupted writes and bring back transient failures."""
        try:
            self.failed_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("outbox_unwritable", path=str(self.failed_dir), error=_why(exc))
        for folder in (self.root, self.failed_dir):
            for stale in folder.glob(f"*{TMP_SUFFIX}"):  # a write that kill -9 interrupted
                with contextlib.suppress(OSError):  # an unwritable folder is reported on put
                    stale.unlink(missing_ok=True)
        for parked in sorted(self.failed_dir.glob(f"*{_SUFFIX}")):
            self._retry_parked(parked)

    def put(self, result: Result) -> bool:
        """Write ``result`` durably; False when the disk refused and it is held in memory."""
        path = self._path(result.id)
        data = json.dumps(result.to_record(), sort_keys=True).encode()
        with self._lock:
            try:
                write_atomically(path, data, durable=False)
            except OSError as exc:
                self._held[result.id] = _Held(result)
                self.last_error = _why(exc)
                log.warning(
                    "outbox_write_failed",
                    result_id=result.id,
                    error=self.last_error,
                    held=len(self._held),
                    action="held in memory until the disk takes it",
                )
                return False
            self._held.pop(result.id, None)
            self._unsynced.add(path)
        return True

    def sync(self) -> int:
        """Make what :meth:`put` wrote survive power loss (the files, then the folder);
        returns how many files could not be synced yet (kept for the next call)."""
        with self._lock:
            paths, self._unsynced = self._unsynced, set()
        if not paths:
            return 0
        failed: dict[Path, str] = {}
        synced = []
        for path in paths:
            try:
                fsync_file(path)
                synced.append(path)
            except FileNotFoundError:
                continue  # published and removed meanwhile
            except OSError as exc:
                failed[path] = _why(exc)
        try:
            fsync_dir(self.root)
        except OSError as exc:
            failed.update((path, _why(exc)) for path in synced)
        if failed:
            with self._lock:
                self._unsynced.update(failed)
            log.warning("outbox_sync_failed", files=len(failed), error=next(iter(failed.values())))
        return len(failed)

    def unsynced(self) -> int:
        """How many files :meth:`sync` still has to make durable."""
        with self._lock:
            return len(self._unsynced)

    def spill(self) -> int:
        """Write held results to disk, oldest first; returns how many are still held."""
        written = 0
        with self._lock:
            for held in sorted(self._held.values(), key=lambda h: _order(h.result)):
                if not self._write_held(held):
                    break
                del self._held[held.result.id]
                written += 1
            if not self._held:
                self.last_error = ""
            remaining = len(self._held)
        if written:
            log.info("outbox_write_resumed", written=written, held=remaining)
        return remaining

    def pending(self) -> list[Result]:
        """Every queued result, oldest completion first; unreadable files move to failed/.
        Synced first: what the caller sends is on disk."""
        self.sync()
        results = []
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            if path.name in self._set_aside:
                continue
            try:
                results.append(read_entry(path))
            except ValueError as exc:
                self._quarantine(path, f"unreadable outbox entry: {exc}")
        with self._lock:
            on_disk = {r.id for r in results}
            results += [
                h.result
                for h in self._held.values()
                if h.reason is None and h.result.id not in on_disk
            ]
        return sorted(results, key=_order)

    def depth(self) -> int:
        """Results waiting to be published, on disk or held in memory."""
        on_disk = {p.name for p in self.root.glob(f"*{_SUFFIX}") if p.name not in self._set_aside}
        with self._lock:
            held = {f"{h.result.id}{_SUFFIX}" for h in self._held.values() if h.reason is None}
        return len(on_disk | held)

    def held_count(self) -> int:
        """How many results exist only in memory; takes no lock, so the event loop may ask."""
        return len(self._held)

    def held(self) -> list[Result]:
        """The results that exist only in memory, because the disk refused them."""
        with self._lock:
            return [h.result for h in self._held.values()]

    def remove(self, result_id: str) -> None:
        """Drop a result the memory has acknowledged."""
        path = self._path(result_id)
        with self._lock:
            self._held.pop(result_id, None)
            self._unsynced.discard(path)
        try:
            path.unlink(missing_ok=True)
            # Outside the lock: a worker's put must not wait for this fsync.
            fsync_dir(self.root)
        except OSError as exc:  # it stays, and is replayed: publishing is idempotent
            log.warning("outbox_remove_failed", file=str(path), error=_why(exc))

    def fail(self, result_id: str, reason: str) -> None:
        """Park a result the memory refused for good, with the reason beside it."""
        with self._lock:
            held = self._held.get(result_id)
            if held is not None:
                held.reason = reason  # spill() parks it in failed/ once the disk allows
                self.spill()
                return
        self._quarantine(self._path(result_id), reason)

    def _write_held(self, held: _Held) -> bool:
        data = json.dumps(held.result.to_record(), sort_keys=True).encode()
        name = f"{held.result.id}{_SUFFIX}"
        try:
            if held.reason is None:
                write_atomically(self.root / name, data)
            else:
                self.failed_dir.mkdir(parents=True, exist_ok=True)
                write_atomically(self.failed_dir / name, data)
                write_atomically(self.failed_dir / f"{held.result.id}{_REASON}", _line(held.reason))
        except OSError as exc:
            self.last_error = _why(exc)
            return False
        return True

    def _quarantine(self, path: Path, reason: str) -> None:
        """Move ``path`` into failed/ with its reason; one log line names the file."""
        if not path.exists() and not path.is_symlink():
            return
        try:
            write_atomically(self.failed_dir / f"{path.stem}{_REASON}", _line(reason))
            os.replace(path, self.failed_dir / path.name)
        except OSError as exc:
            # Keep it where it is, skipped until restart: start-up must go on regardless.
            self._set_aside[path.name] = reason
            log.error("outbox_entry_set_aside", file=str(path), reason=reason, moved=_why(exc))
            return
        log.warning("outbox_entry_set_aside", file=str(path), reason=reason, moved=True)

    def _retry_parked(self, parked: Path) -> None:
        """Bring a failed/ entry back into the outbox when its cause may have passed."""
        reason_file = parked.with_suffix(_REASON)
        try:
            reason = reason_file.read_text(errors="replace").strip()
        except FileNotFoundError:
            reason = ""  # its reason was never written: the cause is unknown, so try again
        except OSError:
            return
        target = self.root / parked.name
        if (reason and not is_transient_reason(reason)) or target.exists():
            return
        try:
            os.replace(parked, target)
            reason_file.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("outbox_retry_failed", file=str(parked), error=_why(exc))
            return
        log.info("outbox_failed_retried", file=str(target), reason=reason or "none recorded")

    def _path(self, result_id: str) -> Path:
        if not _safe_id(result_id):
            raise RunError("result id is not a safe file name", run_id=result_id)
        return self.root / f"{result_id}{_SUFFIX}"


def _safe_id(result_id: str) -> bool:
    return bool(result_id) and "/" not in result_id and not result_id.startswith(".")


# -- reading an entry back ----------------------------------------------------------------


def read_entry(path: Path) -> Result:
    """The result stored at ``path``; ``ValueError`` says in one line why it is unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read it: {_why(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    result = decode_record(record)
    if not _safe_id(result.id):
        raise ValueError(f"its id {result.id!r} is not a safe file name")
    if f"{result.id}{_SUFFIX}" != path.name:
        raise ValueError(f"its id {result.id!r} does not match the file name")
    return result


def decode_record(record: object) -> Result:
    """A :class:`Result` from its JSON record, every field checked against its type."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if missing := sorted(_REQUIRED - record.keys()):
        raise ValueError(f"field {missing[0]!r} is missing")
    for name, hint in _FIELD_TYPES.items():
        if name in record and not _conforms(record[name], hint):
            got = type(record[name]).__name__
            raise ValueError(f"field {name!r}: expected {_hint_name(hint)}, got {got}")
    return Result.from_record(record)


def _conforms(value: object, hint: Any) -> bool:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if typing.get_origin(hint) is Mapping:
        return isinstance(value, dict) and all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if typing.get_origin(hint) is tuple:  # a JSON array: a learning curve's points
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_conforms(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_conforms, value, args))
    if hint is Status:
        return value in Status._value2member_map_
    if hint in (int, float) and isinstance(value, bool):
        return False  # JSON true is no number
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


# -- writing ------------------------------------------------------------------------------


def _order(result: Result) -> tuple[float, str]:
    return (result.completed_at, result.id)


def _line(text: str) -> bytes:
    return (text + "\n").encode("utf-8", errors="replace")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
