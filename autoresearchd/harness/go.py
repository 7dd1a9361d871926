"""The script's side of the go signal: start up early, then wait until the daemon says go.

The daemon may start a run's process before the device is free (a standby) and tell it when
to begin. It passes an inherited stream socket whose number is in ``AUTORESEARCH_GO_FD``. A
script that wants its start-up hidden does its initialisation (imports, data, the device's
context; on a CPU, where no accelerator is held, warm-up steps too), then calls
:func:`wait_for_go`: it says it is ready, blocks until the go byte
arrives and returns the seconds it waited. Without the variable, or with a socket that is
no longer there, it returns at once, so the same script runs alone as it always did. When
the daemon drops the standby instead (the best moved, the config changed, it is shutting
down), the socket closes and the process ends at once.

The daemon only starts a script early when its source calls ``wait_for_go(``. This module
imports nothing heavy; the names it shares with the daemon are in
:mod:`autoresearchd.go_protocol`.
"""

from __future__ import annotations

import os
import sys
import time

from autoresearchd.go_protocol import GO, GO_FD_ENV, READY


def wait_for_go() -> float:
    """Say ready and wait for the daemon's go; the seconds waited (0.0 when run alone)."""
    value = os.environ.pop(GO_FD_ENV, "")
    if not value.isdigit():
        return 0.0
    fd = int(value)
    start = time.perf_counter()
    try:
        os.set_blocking(fd, True)
        os.write(fd, READY)
        answer = os.read(fd, 1)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""  # the daemon closed its end while we started up
    except OSError:
        return 0.0  # no such descriptor, or not a socket: run as a lone script would
    finally:
        _close(fd)
    if answer != GO:
        # The daemon dropped this standby (or is gone): nothing of this run may count.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return time.perf_counter() - start


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
