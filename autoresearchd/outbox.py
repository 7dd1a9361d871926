"""The durable outbox: every result lands on disk here before anything is sent.

One JSON file per result, written to a temporary name, fsynced and renamed, so a
result is either wholly in the outbox or not at all, across kill -9 and power loss.
A file leaves the outbox only after the memory has acknowledged it; publishing is
idempotent by result id, so a crash between the two only causes a harmless replay.
Results the memory refuses for good move to ``failed/`` with the reason, never deleted.
All methods block briefly on the file system; async callers run them in a thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from autoresearchd.errors import RunError
from autoresearchd.models import Result

_SUFFIX = ".json"


class Outbox:
    """A folder of pending results, oldest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failed_dir = root / "failed"

    def open(self) -> None:
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("*.tmp"):  # a write that kill -9 interrupted
            stale.unlink()

    def put(self, result: Result) -> Path:
        """Write ``result`` durably; returns its file."""
        path = self._path(result.id)
        tmp = path.with_suffix(".tmp")
        data = json.dumps(result.to_record(), sort_keys=True).encode()
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.root)
        return path

    def pending(self) -> list[Result]:
        """Every queued result, oldest completion first; unreadable files move to failed/."""
        results = []
        for path in sorted(self.root.glob(f"*{_SUFFIX}")):
            try:
                results.append(Result.from_record(json.loads(path.read_text())))
            except (ValueError, KeyError, TypeError) as exc:
                self._quarantine(path, f"unreadable outbox entry: {exc}")
        return sorted(results, key=lambda r: (r.completed_at, r.id))

    def depth(self) -> int:
        return sum(1 for _ in self.root.glob(f"*{_SUFFIX}"))

    def remove(self, result_id: str) -> None:
        """Drop a result the memory has acknowledged."""
        self._path(result_id).unlink(missing_ok=True)
        _fsync_dir(self.root)

    def fail(self, result_id: str, reason: str) -> None:
        """Park a result the memory refused for good, with the reason beside it."""
        self._quarantine(self._path(result_id), reason)

    def _quarantine(self, path: Path, reason: str) -> None:
        if path.exists():
            os.replace(path, self.failed_dir / path.name)
            (self.failed_dir / f"{path.stem}.reason").write_text(reason + "\n")

    def _path(self, result_id: str) -> Path:
        if not result_id or "/" in result_id or result_id.startswith("."):
            raise RunError("result id is not a safe file name", run_id=result_id)
        return self.root / f"{result_id}{_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    """Persist a rename: without this, a power cut can forget the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
