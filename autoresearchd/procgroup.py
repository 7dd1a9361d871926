"""Stop a child and its whole process group, so no orphan keeps GPU memory or a file.

Every child the daemon starts (a run, a research agent) is a session leader
(``start_new_session=True``), so its process group holds it and everything it spawned.
:func:`stop_group` sends SIGTERM to the group, gives the leader ``grace_s`` to exit,
then sends SIGKILL to whatever is left of the group (children that outlived the leader
included) and reaps the leader. Its waits are not shielded: a caller that must finish
the stop even when cancelled shields the call.
"""

from __future__ import annotations

import os
import signal

import anyio
import anyio.abc


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to every process of group ``pgid``; False when none is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False  # the whole group has already exited
    return True


async def stop_group(process: anyio.abc.Process, grace_s: float) -> bool:
    """SIGTERM ``process``'s group, SIGKILL it after ``grace_s``, and reap the leader.

    A leader that has already exited leaves only orphans, which get SIGKILL at once.
    True when the leader outlived the grace and had to be killed.
    """
    outlived = False
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(grace_s):
            await process.wait()
        outlived = process.returncode is None
    signal_group(process.pid, signal.SIGKILL)
    await process.wait()
    return outlived
