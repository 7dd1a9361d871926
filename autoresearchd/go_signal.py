"""The daemon's end of a run's go socket (the script's end is ``autoresearchd.harness.go``).

Every run gets one: a socketpair whose child end the process inherits, its number in
``AUTORESEARCH_GO_FD``. A script that calls ``wait_for_go()`` writes one ready byte and
blocks until the go byte arrives; one that never calls it just runs. The runner sends go
when the run's time starts (at once for a fresh process, at the device's turn for a
standby) and notes when the ready byte came, which is how ``startup_seconds`` is measured.
Closing the daemon's end without go tells a waiting script to exit.
"""

from __future__ import annotations

import socket
import time

import anyio

from autoresearchd.go_protocol import GO, GO_FD_ENV, READY


class GoLine:
    """One run's go socket: the child end to pass on, the daemon end to signal on."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self._ours: socket.socket | None = ours
        self._theirs: socket.socket | None = theirs
        #: ``time.monotonic()`` when the ready byte arrived, None until then.
        self.ready_at: float | None = None
        #: ``time.monotonic()`` when go was sent, None until then.
        self.go_at: float | None = None
        self._eof = False

    @property
    def child_fd(self) -> int:
        assert self._theirs is not None, "the child end was already handed over"
        return self._theirs.fileno()

    def env(self) -> dict[str, str]:
        return {GO_FD_ENV: str(self.child_fd)}

    def handed_over(self) -> None:
        """The child holds its end now: ours is the only copy left here."""
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None

    def poll_ready(self) -> bool:
        """Read a ready byte already sent, without waiting; True once one has come."""
        if self.ready_at is None and self._ours is not None and not self._eof:
            try:
                data = self._ours.recv(1)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                data = b""
            if data == READY:
                self.ready_at = time.monotonic()
            elif not data:
                self._eof = True  # the script closed its end or exited: no ready is coming
        return self.ready_at is not None

    async def wait_ready(self) -> bool:
        """Until the ready byte comes (True) or the script's end closes without one."""
        while self._ours is not None and not self._eof and not self.poll_ready():
            await anyio.wait_readable(self._ours)
        return self.ready_at is not None

    def go(self) -> None:
        """Start the run's time: the script's ``wait_for_go()`` returns."""
        self.go_at = time.monotonic()
        if self._ours is None:
            return
        try:
            self._ours.send(GO)
        except OSError:
            pass  # the script closed its end (it never waits) or has exited

    def close(self) -> None:
        self.handed_over()
        if self._ours is not None:
            self._ours.close()
            self._ours = None
