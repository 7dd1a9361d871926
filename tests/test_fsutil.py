"""Atomic writes: a file appears whole at its name or not at all, and survives a power cut."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearchd.fsutil import TMP_SUFFIX, fsync_file, write_atomically
from autoresearchd.outbox import Outbox


def test_the_file_appears_whole_with_its_mode_and_no_temporary_left(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_atomically(target, b"secret\n", mode=0o600)
    assert target.read_bytes() == b"secret\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_replace_overwrites_and_no_replace_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        write_atomically(target, b"other", replace=False)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_a_refused_write_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "gone" / "x.json", b"{}")
    assert list(tmp_path.iterdir()) == []


def test_data_and_then_the_new_name_reach_the_disk_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both fsyncs, in order: the file's data before the rename, the folder after it."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomically(tmp_path / "r.json", b"{}")
    assert events == ["fsync-file", "rename", "fsync-dir"]
    events.clear()
    write_atomically(tmp_path / "s.json", b"{}", durable=False)
    assert events == ["rename"], "the caller syncs later"
    fsync_file(tmp_path / "s.json")
    assert events == ["rename", "fsync-file"]
    assert (tmp_path / "s.json").read_bytes() == b"{}"


def test_the_outbox_clears_a_write_that_a_kill_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "outbox"
    root.mkdir()
    killed_mid_write = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from autoresearchd import fsutil\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), 9)\n"
        "fsutil.write_atomically(Path(sys.argv[1]), b'{}')\n"
    )
    done = subprocess.run([sys.executable, "-c", killed_mid_write, str(root / "r1.json")])
    assert done.returncode == -9
    (left,) = root.iterdir()
    assert left.name.endswith(TMP_SUFFIX)
    Outbox(root).open()
    assert [p.name for p in root.iterdir()] == ["failed"]
