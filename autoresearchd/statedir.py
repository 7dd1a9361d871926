"""The state directory's layout: the one place that names what lives under ``daemon.state_dir``.

The names are a contract with the daemon's own past: an upgraded daemon must find the
outbox, runs and memory the previous one left, so they never change. The layout:

- ``runs/``: one run directory per experiment (pruned to the newest few);
- ``outbox/``: results not yet published (:mod:`autoresearchd.outbox`);
- ``data/``: prepared track data, unless ``experiment.data_dir`` says otherwise;
- ``memory.sqlite``: the embedded collective memory, unless ``memory.path`` says otherwise;
- ``hub.sqlite``: a hub's database when ``hub.database`` is empty;
- ``daemon.lock``: held by the one daemon that owns this directory;
- ``control.sock``: the control socket of that daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Where state lives unless ``daemon.state_dir`` says otherwise.
DEFAULT_STATE_DIR = Path("~/.local/state/autoresearchd")


@dataclass(frozen=True, slots=True)
class StateDir:
    """The paths under one state directory ``root``; nothing here touches the disk."""

    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def memory(self) -> Path:
        return self.root / "memory.sqlite"

    @property
    def hub_database(self) -> Path:
        return self.root / "hub.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"

    @property
    def socket(self) -> Path:
        return self.root / "control.sock"
