"""Atomic, durable file writes: a file appears whole at its name, or not at all.

:func:`write_atomically` writes to a fresh temporary file beside the target (created
with ``O_EXCL`` under a unique name, so two writers never share one), fsyncs it, renames
it over the target (or, with ``replace=False``, links it to the target, which fails when
the target exists), and then fsyncs the folder. Both fsyncs are kept, for every caller:
without the first, a power cut after the rename can leave the new name on an empty or
partial file (ext4 and XFS may order the rename before the data); without the second,
it can forget the rename itself. The outbox, which must never lose a result, needs both;
the few other files written this way (prepared data, an API key) are written rarely
enough that the cost does not matter, and a truncated ``meta.json`` or key would be as
bad there. Any failure removes the temporary file and raises the :class:`OSError`.

With ``durable=False`` it skips both fsyncs: the file is still whole or absent across a
kill -9, and the caller makes it survive power loss later (the outbox does, off the path
between runs, before it sends anything) with :func:`fsync_file` and :func:`fsync_dir`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

#: Every temporary file ends so; a folder scan may delete those a kill -9 left behind.
TMP_SUFFIX = ".tmp"


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o644, replace: bool = True, durable: bool = True
) -> None:
    """``data`` at ``path`` whole or not at all, and durable once this returns.

    ``mode`` is the new file's permissions (before the umask); with ``replace=False`` an
    existing ``path`` is left alone and :class:`FileExistsError` raised; with
    ``durable=False`` the fsyncs are left to the caller.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            tmp.unlink()
        if durable:
            fsync_dir(path.parent)
    except OSError:
        with contextlib.suppress(OSError):  # the folder is gone or unwritable: no file left
            tmp.unlink(missing_ok=True)
        raise


def fsync_file(path: Path) -> None:
    """Persist the contents of the file at ``path``."""
    _fsync(path)


def fsync_dir(path: Path) -> None:
    """Persist the names in folder ``path``: without this, a power cut can forget a rename."""
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
