"""A run's process from spawn to end: its run directory, its start, its process group.

:func:`prepare_run_dir` copies the workspace into ``<run_root>/<run_id>`` and writes the
candidate as the script; :func:`spawn` starts ``<python> <script>`` there, leading its own
process group, with its output on a pipe of ours and its go socket
(:mod:`autoresearchd.go_signal`), and returns it as :class:`Started`: a process whose time
has not begun (a standby waits in that state). :class:`RunGroup` ends the group once:
SIGTERM, then SIGKILL after ``kill_grace_s``, which also reaches children that outlived
the script, so no orphan keeps GPU memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog
from anyio.abc import Process

from autoresearchd.errors import RunError
from autoresearchd.go_signal import GoLine
from autoresearchd.procgroup import stop_group
from autoresearchd.run_spec import RunSpec, child_env
from autoresearchd.yielding import Yielded, idle_prefix, yield_cores

log = structlog.get_logger(__name__)

#: How long a dropped standby gets to leave on its own before its group is killed.
STANDBY_EXIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Started:
    """A run's process, started and not yet watched: its output pipe and its go socket."""

    process: Process
    read_fd: int
    line: GoLine
    spawned_at: float = field(default_factory=time.monotonic)
    #: Whether it was started under ``SCHED_IDLE`` (:func:`~autoresearchd.yielding.idle_prefix`).
    idle: bool = False
    #: What a standby gave up while it started up (None: nothing, it runs as usual).
    yielded: Yielded | None = None

    def yield_cores(self) -> None:
        """Let the running run have the cores while this standby starts up."""
        object.__setattr__(self, "yielded", yield_cores(self.process.pid, idle=self.idle))

    def reclaim_cores(self) -> None:
        """Back to the priority it had, from its go on."""
        if self.yielded is not None:
            self.yielded.reclaim()
            object.__setattr__(self, "yielded", None)

    async def discard(self, spec: RunSpec) -> None:
        """End a standby that will not run: its group, its pipe and its socket."""
        with anyio.CancelScope(shield=True):
            # A script waiting for go exits on its own when the socket closes; one still
            # starting up would only see it at its call, so its group ends at once.
            waiting = self.line.poll_ready()
            self.line.close()
            if waiting:
                with anyio.move_on_after(STANDBY_EXIT_S):
                    await self.process.wait()
            await RunGroup(self.process, spec).end()
            await self.process.aclose()
            os.close(self.read_fd)


def prepare_run_dir(spec: RunSpec) -> Path:
    """Copy the workspace into a fresh run directory and write the candidate as the script."""
    if spec.run_id in ("", ".", "..") or "/" in spec.run_id:
        raise RunError("run id must be a plain directory name", run_id=spec.run_id)
    if not spec.workspace.is_dir():
        raise RunError(f"workspace {spec.workspace} is not a directory", run_id=spec.run_id)
    spec.run_root.mkdir(parents=True, exist_ok=True)
    try:
        # symlinks=True: a workspace may link to large data; copy the link, not the data.
        shutil.copytree(spec.workspace, spec.run_dir, symlinks=True, ignore=_ignore(spec))
    except FileExistsError:
        raise RunError(f"run directory {spec.run_dir} already exists", run_id=spec.run_id) from None
    except shutil.Error as exc:
        source, _, why = exc.args[0][0]
        raise RunError(f"cannot copy {source}: {why}", run_id=spec.run_id) from None
    except OSError as exc:
        raise RunError(f"cannot copy workspace: {exc}", run_id=spec.run_id) from None
    # A result file copied from the workspace would pass for this run's own.
    spec.result_path.unlink(missing_ok=True)
    try:
        (spec.run_dir / spec.script).write_text(spec.candidate.source, encoding="utf-8")
    except OSError as exc:
        raise RunError(f"cannot write {spec.script}: {exc.strerror}", run_id=spec.run_id) from None
    return spec.run_dir


def _ignore(spec: RunSpec) -> Callable[[str, list[str]], set[str]]:
    """The ignore patterns, plus run_root itself when it lies inside the workspace."""
    by_pattern = shutil.ignore_patterns(*spec.workspace_ignore)
    run_root = spec.run_root.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = set(by_pattern(directory, names))
        if run_root.name in names and Path(directory).resolve() == run_root.parent:
            ignored.add(run_root.name)
        return ignored

    return ignore


async def spawn(spec: RunSpec, *, standby: bool = False) -> Started:
    """Start ``spec``'s process in its prepared run directory; its time starts at go.

    A ``standby`` starts under ``SCHED_IDLE`` where the daemon may give the usual policy
    back (:mod:`autoresearchd.yielding`).

    Raises :class:`RunError` when the interpreter (or the sandbox's wrapper) cannot start.
    """
    # Our own pipe rather than asyncio's: asyncio's wait() also waits for its pipes to close,
    # which a grandchild holding stdout would delay until the group is killed.
    read_fd, write_fd = os.pipe()
    line = GoLine()
    try:
        os.set_blocking(read_fd, False)
        prefix = idle_prefix() if standby else ()
        process = await _start(spec, write_fd, line, prefix)
    except BaseException:
        os.close(read_fd)
        line.close()
        raise
    finally:
        os.close(write_fd)
        line.handed_over()
    return Started(process, read_fd, line, idle=bool(prefix))


async def _start(spec: RunSpec, output_fd: int, line: GoLine, prefix: tuple[str, ...]) -> Process:
    try:
        process = await anyio.open_process(
            [*prefix, *spec.command],
            cwd=spec.run_dir,
            env={**child_env(spec), **line.env()},
            stdin=subprocess.DEVNULL,
            stdout=output_fd,
            stderr=output_fd,
            start_new_session=True,
            pass_fds=(line.child_fd,),
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunError(f"cannot start {spec.command[0]}: {reason}", run_id=spec.run_id) from None
    log.info("run_started", run_id=spec.run_id, device=spec.device.uuid, pid=process.pid)
    return process


class RunGroup:
    """The child's process group, ended once: SIGTERM, then SIGKILL after the grace period."""

    def __init__(self, process: Process, spec: RunSpec) -> None:
        self.process = process
        self.spec = spec
        self._ended = False

    async def end(self) -> None:
        if self._ended:
            return
        # Also reaches children that outlived the leader: they are orphans now.
        if await stop_group(self.process, self.spec.kill_grace_s):
            log.warning(
                "run_killed",
                run_id=self.spec.run_id,
                pid=self.process.pid,
                kill_grace_s=self.spec.kill_grace_s,
            )
        self._ended = True
