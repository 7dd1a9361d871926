"""What a sandboxed child sees of the filesystem: one mount plan, rendered for bwrap or for sh.

:func:`plan_mounts` turns the paths a run needs (its run directory, the data, the interpreter
and the packages it imports) and the paths it must not see (the state directory, key files)
into an ordered list of :class:`Mount`. Private scratch (``/tmp``, ``/dev/shm``) and every
directory the child's uid cannot traverse (a 0700 home such as ``/root`` that holds a pyenv
interpreter or the state directory) become fresh tmpfs mounts, and what the child needs
inside them is bound back at its own path, with traversable (0755) directories above it.
So a state directory or a venv under a private home works as it does anywhere else.

:func:`bwrap_args` renders the plan as bubblewrap options. :func:`mount_script` renders it as
a ``sh`` script for a fresh mount namespace (``unshare --mount``), for hosts without
bubblewrap: bind sources are first staged under a private ``/dev/shm``, because masking a
directory hides what is below it, then moved into place.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["tmpfs", "ro", "rw", "null", "dir"]
#: Mounted before binds at the same path, so a bind can re-expose part of a masked tree.
_RANK: dict[Kind, int] = {"tmpfs": 0, "dir": 0, "ro": 1, "null": 1, "rw": 2}
SCRATCH = (Path("/tmp"), Path("/dev/shm"))
SCRATCH_MODE = 0o1777
MASK_MODE = 0o755
#: Where the sh rendering stages bind sources before it masks their parents.
STAGE = Path("/dev/shm")


@dataclass(frozen=True, slots=True)
class Mount:
    """One step: a tmpfs, a read-only or writable bind of the same path, /dev/null over a
    file, or a traversable directory made inside a tmpfs (``dir``)."""

    kind: Kind
    path: Path
    mode: int = MASK_MODE


def plan_mounts(
    *,
    run_dir: Path,
    readable: Iterable[Path],
    hidden_dirs: Iterable[Path] = (),
    hidden_files: Iterable[Path] = (),
    uid: int | None = None,
    writable: Iterable[Path] = (),
) -> list[Mount]:
    """The mounts, ordered so each one's parents exist and are traversable when it is made.

    ``uid`` is the child's own uid (None: the daemon's): directories above a needed path
    that it cannot traverse are masked. ``writable`` are bound writable like the run
    directory (a persistent cache inside the hidden state directory, say).
    """
    writable = [p for p in dict.fromkeys(writable) if p != run_dir]
    readable = [p for p in dict.fromkeys(readable) if p != run_dir and p not in writable]
    needed = [run_dir, *readable, *writable]
    steps = [Mount("tmpfs", top, SCRATCH_MODE) for top in SCRATCH]
    steps += [Mount("tmpfs", top) for top in unreachable_tops(needed, uid)]
    steps += [Mount("tmpfs", hidden) for hidden in hidden_dirs]
    steps += [Mount("null", secret) for secret in hidden_files]
    steps += [Mount("ro", path) for path in readable]
    steps += [Mount("rw", path) for path in writable]
    steps.append(Mount("rw", run_dir))
    return _with_parents(_ordered(steps))


def unreachable_tops(needed: Iterable[Path], uid: int | None) -> list[Path]:
    """For each needed path, its topmost ancestor that ``uid`` cannot search."""
    tops: set[Path] = set()
    for path in needed:
        for parent in reversed(path.parents):
            if parent != Path("/") and not _searchable(parent, uid):
                tops.add(parent)
                break
    return sorted(tops)


def _searchable(directory: Path, uid: int | None) -> bool:
    if uid is None:
        return os.access(directory, os.X_OK)
    try:
        info = directory.stat()
    except OSError:
        return True  # made by a mount below, traversable by construction
    # The sandbox uid owns nothing outside its run and holds no groups: only "other" counts.
    return bool(info.st_mode & stat.S_IXOTH) or info.st_uid == uid


def _ordered(steps: Sequence[Mount]) -> list[Mount]:
    unique = list(dict.fromkeys(steps))
    return sorted(unique, key=lambda m: (m.path.parts, _RANK[m.kind]))


def _with_parents(steps: Sequence[Mount]) -> list[Mount]:
    """Insert a 0755 ``dir`` for each parent that lies inside an earlier tmpfs and is not a
    mount itself (bwrap would make it 0700, so the child's uid could not pass), and drop
    masks that an earlier tmpfs already covers."""
    done: list[Mount] = []
    made: set[Path] = set()
    for step in steps:
        if step.kind in ("tmpfs", "null") and _inside_tmpfs(step.path, done):
            continue  # already hidden by the tmpfs above it
        for parent in reversed(step.path.parents):
            if parent not in made and _inside_tmpfs(parent, done):
                done.append(Mount("dir", parent))
                made.add(parent)
        done.append(step)
        made.add(step.path)
    return done


def _inside_tmpfs(path: Path, done: Sequence[Mount]) -> bool:
    """Whether the deepest mount so far covering ``path`` is a tmpfs strictly above it."""
    covering = [m for m in done if m.kind != "dir" and path.is_relative_to(m.path)]
    if not covering:
        return False
    deepest = max(covering, key=lambda m: len(m.path.parts))
    return deepest.kind == "tmpfs" and deepest.path != path


# -- renderings ----------------------------------------------------------------------------


def bwrap_args(steps: Sequence[Mount]) -> list[str]:
    """bubblewrap options for ``steps`` (after ``--ro-bind / /``)."""
    argv: list[str] = []
    for step in steps:
        path = str(step.path)
        if step.kind == "tmpfs":
            argv += ["--perms", f"{step.mode:04o}", "--tmpfs", path]
        elif step.kind == "dir":
            argv += ["--perms", f"{step.mode:04o}", "--dir", path]
        elif step.kind == "null":
            argv += ["--ro-bind", "/dev/null", path]
        else:
            argv += ["--ro-bind" if step.kind == "ro" else "--bind", path, path]
    return argv


def mount_script(steps: Sequence[Mount], mount: str, mkdir: str, *, chdir: Path) -> str:
    """A ``sh -c`` script that makes ``steps`` in the current mount namespace, enters
    ``chdir`` and then runs its arguments (``exec "$@"``). ``mount`` and ``mkdir`` are the
    binaries' absolute paths: the child's PATH is not ours to trust."""
    binds = [s for s in steps if s.kind in ("ro", "rw")]
    staged = {s.path: STAGE / f"bind-{i}" for i, s in enumerate(binds)}
    q, m, d = shlex.quote, shlex.quote(mount), shlex.quote(mkdir)
    lines = ["set -e", "umask 022", f"{m} -t tmpfs -o mode=0700 tmpfs {q(str(STAGE))}"]
    for step in binds:
        make = d if step.path.is_dir() else ": >"
        lines += [f"{make} {q(str(staged[step.path]))}"]
        lines += [f"{m} --rbind {q(str(step.path))} {q(str(staged[step.path]))}"]
    for step in steps:
        if step.path == STAGE:
            continue  # remade last, once the staged binds have moved out
        lines += _script_step(step, staged.get(step.path), m, d)
    # Mounted over the emptied stage: the child gets a clean, shared-memory-sized scratch.
    lines += [f"{m} -t tmpfs -o mode={SCRATCH_MODE:04o} tmpfs {q(str(STAGE))}"]
    # The daemon's home may be unreadable to the child's uid, or masked.
    lines += [f"cd {q(str(chdir))}", "export HOME=/tmp", 'exec "$@"']
    return "\n".join(lines)


def _script_step(step: Mount, staged: Path | None, m: str, d: str) -> list[str]:
    path = shlex.quote(str(step.path))
    if step.kind == "tmpfs":
        return [f"{m} -t tmpfs -o mode={step.mode:04o} tmpfs {path}"]
    if step.kind == "dir":
        return [f"[ -d {path} ] || {d} -m {step.mode:04o} {path}"]
    if step.kind == "null":
        return [f"{m} --bind /dev/null {path}"]
    assert staged is not None
    make = d if step.path.is_dir() else ": >"
    target = [f"[ -e {path} ] || {make} {path}", f"{m} --move {shlex.quote(str(staged))} {path}"]
    if step.kind == "ro":
        target.append(f"{m} -o remount,bind,ro {path}")
    return target
