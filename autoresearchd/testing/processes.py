"""What tests and benchmarks read of running processes from ``/proc`` (Linux only).

:func:`worker_pids` finds the other workers a ``hub serve`` process with ``hub.workers``
above one started, once each of them listens on the hub's port: the first worker answers
``/healthz`` before its children do, and a load sent before they listen would all reach
it. :func:`cpu_seconds` is the CPU time processes have used, read before and after a load.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

#: How long the other workers may take to start listening (a loaded machine is slow).
WORKERS_LISTEN_S = 60.0


def worker_pids(pid: int, port: int, count: int, timeout_s: float = WORKERS_LISTEN_S) -> list[int]:
    """The ``count`` children of process ``pid``, once each listens on ``port``."""
    deadline = time.monotonic() + timeout_s
    children: list[str] = []
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        listening = _listening_sockets(port)
        if len(children) == count and all(_holds_one(int(c), listening) for c in children):
            return [int(child) for child in children]
        time.sleep(0.05)
    raise TimeoutError(
        f"process {pid}: {len(children)} of {count} workers listen on port {port}"
        f" after {timeout_s:.0f} s"
    )


def cpu_seconds(pids: list[int]) -> float:
    """The CPU time (user and system) the processes ``pids`` have used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _listening_sockets(port: int) -> set[str]:
    """``socket:[inode]`` of each TCP socket listening on ``port`` (state 0A in /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(f"socket:[{fields[9]}]")
    return found


def _holds_one(pid: int, sockets: set[str]) -> bool:
    """Whether process ``pid`` has one of ``sockets`` open (its own, never inherited:
    ``hub serve`` starts its workers with no descriptor but the standard three)."""
    try:
        return any(os.readlink(fd) in sockets for fd in Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:  # it exited, or closed a file while it was looked at
        return False
