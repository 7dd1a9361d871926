"""Solo mode: the dashboard of one machine, served from its local SQLite memory.

``autoresearchd dashboard --config PATH`` runs :func:`serve`: the same pages as a hub's,
read from ``memory.path``, plus each local device's live state from the running daemon's
control socket. It binds to 127.0.0.1 unless told otherwise, and is public to whoever can
reach that address, so a wider address is the user's explicit choice.
"""

from __future__ import annotations

import structlog
from starlette.applications import Starlette

from autoresearchd.config import Config
from autoresearchd.control import socket_path
from autoresearchd.dashboard.memory_source import MemorySource, control_devices
from autoresearchd.dashboard.web import Settings, dashboard_routes
from autoresearchd.errors import ConfigError
from autoresearchd.memory.sqlite import SqliteMemory
from autoresearchd.plot import prepared_floor

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8766


def solo_app(config: Config, memory: SqliteMemory) -> Starlette:
    """The dashboard over an opened ``memory``, with the devices of ``config``'s daemon."""
    source = MemorySource(
        memory,
        baseline=_baseline(config),
        devices=control_devices(socket_path(config.daemon.state_dir)),
    )
    floor = prepared_floor(config.experiment.data_dir, config.experiment.track)
    floors = {config.experiment.track: floor} if floor is not None else {}
    settings = Settings(title="autoresearchd · this machine", floors=floors)
    return Starlette(routes=dashboard_routes(source, settings))


def _baseline(config: Config) -> str | None:
    """The workspace's train.py: the parent of the first runs, if it can be read."""
    try:
        return (config.experiment.workspace / "train.py").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


async def serve(config: Config, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the solo dashboard until cancelled or signalled."""
    import uvicorn  # the hub extra; only this command needs it

    if config.memory.backend != "sqlite":
        raise ConfigError(
            f"the dashboard command reads the local sqlite memory, not {config.memory.backend};"
            " open the hub's /dashboard/ instead",
            path=str(config.source),
            key="memory.backend",
        )
    async with SqliteMemory(config.memory.path) as memory:
        server = uvicorn.Server(
            uvicorn.Config(
                solo_app(config, memory),
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        log.info("dashboard_serving", host=host, port=port, memory=str(config.memory.path))
        await server.serve()
