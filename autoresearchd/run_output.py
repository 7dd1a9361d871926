"""A run's output: ``run.log`` with bounded memory, the summary, the line that says what failed.

:func:`pump` copies the child's merged output into a :class:`LogSink` (a capped file and a
small in-memory tail to parse) and feeds it to the run's learning curve, which reads the
progress lines (:mod:`autoresearchd.early_stopping`). :func:`read_summary` reads the
outcome with :mod:`autoresearchd.summary`, from the result file or the output's ``---``
block; :func:`exit_error` and :func:`last_error_line` turn a failed run's end into one
readable line.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import anyio
import anyio.lowlevel

from autoresearchd.early_stopping import LearningCurve
from autoresearchd.errors import RunError
from autoresearchd.models import Summary
from autoresearchd.summary import parse_result_json, parse_summary_text

#: How much of the output's end stays in memory: the summary block is parsed from it.
TAIL_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
MAX_RESULT_FILE_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 300


async def pump(fd: int, sink: LogSink, drained: anyio.Event, curve: LearningCurve) -> None:
    """Copy the child's output into ``sink`` until every writer has closed the pipe."""
    while True:
        try:
            chunk = os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        if not chunk:
            drained.set()
            return
        sink.write(chunk)
        curve.feed(chunk)
        # A flood keeps the pipe readable; yield so other workers' tasks still run.
        await anyio.lowlevel.checkpoint()


class LogSink:
    """``run.log`` on disk and the output's last bytes in memory.

    Past ``max_bytes`` the middle of the output is dropped: the file keeps its head, a line
    saying how much was dropped, and the tail, so a flood can neither fill the disk nor hide
    the summary printed at the end. Writes go straight to the page cache, which costs less than
    a thread hop per chunk. A disk that refuses a write (full, say) ends the file there, with a
    last attempt at the tail on close: the run goes on, and its summary is read from memory.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise RunError(f"cannot create {path}: {exc.strerror or exc}") from None
        self._tail_room = min(TAIL_BYTES, max_bytes // 2)
        self._head_room = max_bytes - self._tail_room
        self._tail = bytearray()
        self.total = 0
        self.written = 0
        self.dropped = 0
        #: Why the disk refused the log, empty while every write landed.
        self.error = ""

    def write(self, chunk: bytes) -> None:
        room = self._head_room - self.written
        if room > 0 and not self.error:
            self._put(chunk[:room])
        self.total += len(chunk)
        self._tail += chunk
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]

    def close(self) -> None:
        if self._fd is None:
            return
        unwritten = self.total - self.written
        if unwritten > 0:
            kept = min(unwritten, self._tail_room)
            self.dropped = unwritten - kept
            if self.dropped:
                self._put(b"\n[autoresearchd: %d bytes of output dropped]\n" % self.dropped)
            self._put(bytes(self._tail[len(self._tail) - kept :]))
        try:
            os.close(self._fd)
        except OSError as exc:  # some file systems report a full disk only here
            self.error = self.error or exc.strerror or str(exc)
        self._fd = None

    def _put(self, data: bytes) -> None:
        """Write all of ``data``, or note why the disk would not take it."""
        view = memoryview(data)
        try:
            while view and self._fd is not None:
                done = os.write(self._fd, view)
                self.written += done
                view = view[done:]
        except OSError as exc:
            self.error = self.error or exc.strerror or str(exc)

    def tail_text(self) -> str:
        return self._tail.decode("utf-8", errors="replace")


def read_summary(result_path: Path, output_tail: str) -> Summary | None:
    """The JSON result file's summary when it has ``val_bpb``, else the output's ``---`` block."""
    from_file = _read_result_file(result_path)
    if from_file is not None and from_file.val_bpb is not None:
        return from_file
    return parse_summary_text(output_tail) or from_file


def _read_result_file(path: Path) -> Summary | None:
    # The child controls its run directory: refuse links and FIFOs (a FIFO would block the read).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # absent, a symlink or unreadable: there is no usable result file
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = file.read(MAX_RESULT_FILE_BYTES + 1)
    if len(data) > MAX_RESULT_FILE_BYTES:
        return None
    return parse_result_json(data.decode("utf-8", errors="replace"))


def exit_error(returncode: int | None, tail: str) -> str:
    if returncode is not None and returncode < 0:
        return f"killed by {_signal_name(-returncode)}"
    reason = last_error_line(tail)
    return f"exit code {returncode}: {reason}" if reason else f"exit code {returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def last_error_line(output: str) -> str:
    """The exception line of the last traceback in ``output``, else its last non-blank line."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if starts:
        # Frames are indented; the first flush-left line after them names the exception.
        for line in lines[starts[-1] + 1 :]:
            if line.strip() and not line[0].isspace():
                return line.strip()[:MAX_ERROR_CHARS]
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:MAX_ERROR_CHARS]
    return ""
