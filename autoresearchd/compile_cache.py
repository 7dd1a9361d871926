"""A persistent compile cache per device and trust level, so ``torch.compile`` is warm from the
second run on.

Each run's sandbox has its own private ``/tmp``, where torch's compilers keep their caches by
default, so every run used to compile from cold. The cache lives instead under
``<state_dir>/compile-cache/<device>/<trust>/``, the only part of the state directory the
sandbox binds back (writable), and the run is pointed at it through the environment
(:data:`CACHE_ENV`). It is keyed by device because compiled kernels are built for one GPU,
and by trust level because a run may write into it and the next run loads what it finds:
under ``params-only`` (and ``any``) every script is the trusted baseline with other numbers,
so one cache per device is shared; under ``sandboxed`` scripts from the network run
unchecked, so each candidate gets a cache of its own (its replicates are warm, nothing
it writes reaches another script), and only the newest :data:`KEEP_CANDIDATES` are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import structlog

from autoresearchd.config import Config
from autoresearchd.models import Candidate, Device

log = structlog.get_logger(__name__)

DIR_NAME = "compile-cache"
#: Per-candidate caches kept for each device under ``trust = "sandboxed"``.
KEEP_CANDIDATES = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def cache_dir(state_dir: Path, device_uuid: str, trust: str, sha256: str) -> Path:
    """Where one run's compile cache lives (see the module's docstring for the keying)."""
    base = state_dir.absolute() / DIR_NAME / _UNSAFE.sub("_", device_uuid) / trust
    return base / sha256[:16] if trust == "sandboxed" else base


def for_run(config: Config, device: Device, candidate: Candidate) -> Path | None:
    """The ready cache directory for a run of ``candidate`` on ``device``, or None."""
    trust = config.experiment.trust
    path = cache_dir(config.daemon.state_dir, device.uuid, trust, candidate.sha256)
    return prepare(path, trust)


def cache_env(path: Path) -> dict[str, str]:
    """The environment that points torch's compilers (inductor, triton) at ``path``."""
    return {
        "TORCHINDUCTOR_CACHE_DIR": str(path / "inductor"),
        "TRITON_CACHE_DIR": str(path / "triton"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1",
    }


def prepare(path: Path, trust: str) -> Path | None:
    """Make ``path`` (pruning old per-candidate caches); None when it cannot be made."""
    try:
        fresh = not path.is_dir()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("compile_cache_unavailable", path=str(path), error=str(exc))
        return None
    if fresh and trust == "sandboxed":
        prune(path.parent, KEEP_CANDIDATES, keep=path.name)
    return path


def prune(parent: Path, count: int, *, keep: str) -> None:
    """Remove all but the ``count`` newest caches under ``parent`` (never ``keep``)."""
    try:
        caches = sorted(
            (p for p in parent.iterdir() if p.is_dir() and not p.is_symlink()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except OSError:
        return
    for old in caches[count:]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def give_to(path: Path, uid: int) -> None:
    """Let the sandbox's uid for this run write the cache (uids may change between daemons)."""
    try:
        if path.stat().st_uid == uid:
            return  # given already: walking a large cache on every run would cost time
        os.chown(path, uid, uid, follow_symlinks=False)
        for parent, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.chown(os.path.join(parent, name), uid, uid, follow_symlinks=False)
    except OSError as exc:
        log.warning("compile_cache_chown_failed", path=str(path), error=str(exc))
