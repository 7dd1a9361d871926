"""A small file system that tests fill up and free again, to meet ENOSPC for real.

As root (or with CAP_SYS_ADMIN) :func:`small_filesystem` mounts a tmpfs of a few
megabytes, and :meth:`SmallFilesystem.fill` writes a filler file until the kernel says
"No space left on device". Where mounting is impossible it falls back to the OS edge:
``os.write`` raises ENOSPC for files under the folder while it is "full". Setting
``AUTORESEARCHD_TEST_FAKE_ENOSPC=1`` forces that fallback, to check it on a root machine.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from unittest import mock

FAKE_ENV = "AUTORESEARCHD_TEST_FAKE_ENOSPC"
FILLER = ".filler"
#: Write sizes that fill a file system to its last byte, coarse to fine.
CHUNKS = (1 << 20, 1 << 16, 1 << 12, 1 << 8, 1)


class SmallFilesystem:
    """A folder whose file system can be made full and emptied again."""

    def __init__(self, path: Path, real: bool) -> None:
        self.path = path
        self.real = real
        self.full = False

    def fill(self) -> None:
        self.full = True
        if not self.real:
            return
        with open(self.path / FILLER, "ab", buffering=0) as filler:
            for size in CHUNKS:
                block = b"\0" * size
                with suppress(OSError):
                    while True:
                        filler.write(block)

    def free(self) -> None:
        self.full = False
        (self.path / FILLER).unlink(missing_ok=True)

    def covers(self, fd: int) -> bool:
        """Whether ``fd`` is open on a file in this folder (for the fallback)."""
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return Path(target).is_relative_to(self.path)


@contextmanager
def small_filesystem(path: Path, size: str = "4m") -> Iterator[SmallFilesystem]:
    """A :class:`SmallFilesystem` at ``path`` (created), unmounted on the way out."""
    path.mkdir(parents=True)
    if os.environ.get(FAKE_ENV) != "1" and _mount(path, size):
        try:
            yield SmallFilesystem(path, real=True)
        finally:
            # Lazy: a file still open (a database, a log) must not keep the test from ending.
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    disk = SmallFilesystem(path, real=False)
    with mock.patch("os.write", _refusing_write(disk, os.write)):
        yield disk


def _mount(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def _refusing_write(
    disk: SmallFilesystem, write: Callable[[int, bytes], int]
) -> Callable[[int, bytes], int]:
    def refusing(fd: int, data: bytes) -> int:
        if disk.full and disk.covers(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, data)

    return refusing
