"""What the daemon shares with its workers, and what a worker's parts read of their worker.

:class:`WorkerContext` holds the daemon's parts (config, memory, outbox, publisher, GPUs,
the stop events) and the daemon-wide :class:`~autoresearchd.worker.ledger.Ledger`.
:class:`Host` is a Protocol: the parts of a worker (its claims, its view of the best, its
runs) read the worker that owns them through it, so none of them imports the loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from autoresearchd.config import Config
from autoresearchd.early_stopping import EarlyStopping
from autoresearchd.gpus import Gpus
from autoresearchd.memory.protocol import CollectiveMemory
from autoresearchd.models import Candidate, Device
from autoresearchd.outbox import Outbox
from autoresearchd.publisher import Publisher
from autoresearchd.records import Origin
from autoresearchd.sandbox import Sandbox
from autoresearchd.worker.ledger import Ledger


@dataclass
class WorkerContext:
    """What the daemon shares with its workers. ``config`` is swapped on reload."""

    config: Config
    memory: CollectiveMemory
    outbox: Outbox
    publisher: Publisher
    gpus: Gpus
    draining: anyio.Event = field(default_factory=anyio.Event)
    stop_runs: anyio.Event = field(default_factory=anyio.Event)
    software: dict[str, str] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    ledger: Ledger = field(default_factory=Ledger)
    new_seed: Callable[[], int] = field(default=lambda: random.SystemRandom().randrange(2**31))
    #: Stored learning curves and their calibration: what stops hopeless runs early.
    stopping: EarlyStopping = field(default_factory=EarlyStopping)


class Host(Protocol):
    """The worker as its parts read it. This is a Protocol: the worker implements it."""

    @property
    def device(self) -> Device: ...
    @property
    def ctx(self) -> WorkerContext: ...
    @property
    def config(self) -> Config: ...


def baseline(config: Config) -> Candidate:
    """The workspace's own script: the trusted root every worker starts from."""
    script = config.experiment.workspace / config.experiment.script
    source = script.read_text(encoding="utf-8")
    return Candidate(source=source, parent_sha256=None, description="baseline")


def origin(host: Host) -> Origin:
    """What the worker's records carry now: the config and device may have changed."""
    agent, track = host.config.daemon.agent, host.config.experiment.track
    return Origin(agent, track, host.device, host.ctx.software)
