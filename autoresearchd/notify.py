"""sd_notify without dependencies: tell systemd we are ready, alive, reloading or stopping.

systemd passes a unix datagram socket in ``NOTIFY_SOCKET`` (a path, or an abstract
name starting with ``@``) and, with ``WatchdogSec=``, the interval in ``WATCHDOG_USEC``.
Outside systemd both are unset and every call is a no-op, so callers never check.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends ``KEY=value`` datagrams to systemd's notify socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_interval(env)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def ready(self, status: str = "") -> None:
        self.send(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self, status: str = "") -> None:
        self.send(STOPPING="1", STATUS=status)

    def send(self, **fields: str) -> None:
        if not self.address:
            return
        payload = "\n".join(f"{key}={value}" for key, value in fields.items() if value)
        try:
            # A socket per datagram: a few messages a minute, and nothing left to close.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload.encode(), self.address)
        except OSError as exc:
            # Losing a notification must never take the daemon down; say so once.
            if not self._warned:
                log.warning("sd_notify_failed", error=str(exc))
                self._warned = True


def _address(value: str) -> str:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    return value


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
