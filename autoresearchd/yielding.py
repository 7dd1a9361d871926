"""How a standby yields the CPU to the run beside it while it starts up, and takes it back.

torch's threads on a CPU wait on each other at every operation, so a run whose cores are
shared with a second busy process slows many times over, however niced the second one is
(a two-thread matmul loop on 2 cores: 12x slower beside a plain process, 11x beside one
at autogroup nice 15, 1.5x at autogroup nice 19, 5.9x under ``SCHED_IDLE`` alone and 1.1x
under both). A
standby therefore yields with every lever the host allows, and all of them are undone at
its go for every thread of its processes:

- ``SCHED_IDLE``: the standby starts under ``chrt --idle 0``, so it runs only on a core that
  nobody else wants. Only a root daemon uses it, since leaving the policy needs
  CAP_SYS_NICE (the script would otherwise train at idle priority);
- its session's autogroup: where the kernel schedules each session as one group, a
  niceness only orders a process within its own session, and every run leads a session of
  its own, so it is the group's nice (``/proc/<pid>/autogroup``) that yields. Any owner
  may set it and give it back;
- its process group's niceness, where there are no autogroups (root only, as above).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: The niceness of a standby's process group and of its autogroup while it starts up.
NICENESS = 15
AUTOGROUP_NICENESS = 19
#: A thread being created while the policy is given back inherits the old one: look again.
RECLAIM_PASSES = 3


def idle_prefix() -> tuple[str, ...]:
    """What to put before a standby's command so it starts under ``SCHED_IDLE``; empty
    where the daemon could not give the usual policy back at go (not root), or where
    util-linux's ``chrt`` is missing."""
    if not hasattr(os, "SCHED_IDLE") or os.geteuid() != 0:
        return ()
    chrt = shutil.which("chrt")
    return (chrt, "--idle", "0") if chrt else ()


@dataclass(frozen=True, slots=True)
class Yielded:
    """What a standby's group was made to give up, to be given back at go."""

    pid: int
    idle: bool = False
    autogroup_from: int | None = None
    niceness_from: int | None = None

    def reclaim(self) -> None:
        """Back to what it had: the usual policy for every thread, the autogroup's nice and
        the group's niceness."""
        if self.idle:
            _leave_idle(self.pid)
        if self.autogroup_from is not None and not _set_autogroup_nice(
            self.pid, self.autogroup_from
        ):
            log.warning("standby_priority_not_restored", pid=self.pid, error="autogroup")
        if self.niceness_from is not None:
            try:
                os.setpriority(os.PRIO_PGRP, self.pid, self.niceness_from)
            except OSError as exc:
                log.warning("standby_priority_not_restored", pid=self.pid, error=str(exc))


def yield_cores(pid: int, *, idle: bool) -> Yielded:
    """Make the group that ``pid`` leads yield; ``idle`` says it was started under
    :func:`idle_prefix`."""
    autogroup = _autogroup_nice(pid)
    if autogroup is not None and not _set_autogroup_nice(pid, AUTOGROUP_NICENESS):
        autogroup = None
    niceness = None
    if os.geteuid() == 0:
        try:
            niceness = os.getpriority(os.PRIO_PGRP, pid)
            os.setpriority(os.PRIO_PGRP, pid, NICENESS)
        except OSError:
            niceness = None
    return Yielded(pid, idle, autogroup, niceness)


def _leave_idle(leader: int) -> None:
    for _ in range(RECLAIM_PASSES):
        changed = 0
        for tid in group_threads(leader):
            try:
                if os.sched_getscheduler(tid) != os.SCHED_IDLE:
                    continue
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            except OSError as exc:
                log.warning("standby_priority_not_restored", pid=tid, error=str(exc))
                continue
            changed += 1
        if not changed:
            return


def group_threads(leader: int) -> list[int]:
    """Every thread of ``leader`` and of all its descendants (orphans in a sandbox's PID
    namespace are reparented to a descendant too), found through ``/proc``'s children lists
    rather than a scan of every process on the host, since this runs at each go."""
    threads: list[int] = []
    todo, seen = [leader], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            tasks = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        except (OSError, ValueError):
            continue  # gone meanwhile
        threads += tasks
        for tid in tasks:
            try:
                todo += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
            except (OSError, ValueError):
                continue
    return threads


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of ``pid``'s scheduling autogroup; None where there is none."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None  # no autogroups (disabled, or not Linux), or the process is gone
    _, _, nice = text.partition(" nice ")
    return int(nice) if nice.strip().lstrip("-").isdigit() else None


def _set_autogroup_nice(pid: int, nice: int) -> bool:
    try:
        Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n", encoding="ascii")
    except OSError:
        return False
    return True
