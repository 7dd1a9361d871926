"""Stopping a child's process group: SIGTERM, SIGKILL after the grace, and no orphan left."""

import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from autoresearchd.procgroup import signal_group, stop_group

pytestmark = pytest.mark.anyio

#: A leader (and its grandchild) that ignore SIGTERM; it prints the grandchild's pid.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""

#: A leader that exits at once, leaving its grandchild (whose pid it prints) as an orphan.
DESERTER = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
"""


async def start(script: str) -> tuple[anyio.abc.Process, int]:
    """The leader, once it has started its grandchild, and the grandchild's pid."""
    process = await anyio.open_process([sys.executable, "-c", script], start_new_session=True)
    assert process.stdout is not None
    with anyio.fail_after(20):
        line = await process.stdout.receive()
    return process, int(line)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def gone(pid: int) -> bool:
    """Whether ``pid`` stops within a few seconds (init reaps an orphan in its own time)."""
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


async def test_a_group_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    process, grandchild = await start(STUBBORN)
    started = time.monotonic()
    assert await stop_group(process, grace_s=0.5) is True
    assert time.monotonic() - started >= 0.5
    assert process.returncode == -9
    assert gone(grandchild)
    await process.aclose()


async def test_a_leader_that_obeys_sigterm_is_not_reported_killed() -> None:
    process = await anyio.open_process(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    assert await stop_group(process, grace_s=10) is False
    assert process.returncode == -15
    await process.aclose()


async def test_orphans_of_a_leader_that_already_exited_are_killed() -> None:
    process, orphan = await start(DESERTER)
    await process.wait()
    assert alive(orphan)
    assert await stop_group(process, grace_s=10) is False
    assert gone(orphan)
    await process.aclose()


def test_signalling_a_group_with_no_process_left_says_so() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert signal_group(pid, signal.SIGTERM) is False
