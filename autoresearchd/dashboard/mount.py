"""Build the dashboard from a config: the routes a hub mounts, and its read key.

:func:`hub_routes` gives what ``hub.dashboard`` asks for: nothing (``off``), the pages
for anyone (``public``), or the pages behind HTTP Basic whose password is the key in
``hub.dashboard_key_file`` (``private``; the file must be mode 0600, like every secret).
Its requests are limited per client IP as the hub's own are (``hub.rate_limit_ip_*``).
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute

from autoresearchd.config import UNSET_PATH, HubConfig
from autoresearchd.dashboard.hub_source import HubSource
from autoresearchd.dashboard.web import Settings, dashboard_routes
from autoresearchd.errors import ConfigError
from autoresearchd.hub.ratelimit import RateLimiter
from autoresearchd.hub.storage.protocol import HubStore

KEY_FILE = "hub.dashboard_key_file"


def hub_routes(store: HubStore, config: HubConfig) -> list[BaseRoute]:
    """The dashboard's routes for a hub over ``store``; none when it is off."""
    if config.dashboard == "off":
        return []
    key = read_key(config.dashboard_key_file) if config.dashboard == "private" else None
    settings = Settings(
        title=f"@{config.org} · autoresearchd" if config.org else "autoresearchd hub",
        read_key=key,
        floors=dict(config.dashboard_floors),
        limit=RateLimiter(config.rate_limit_ip_per_s, config.rate_limit_ip_burst).retry_after,
    )
    return list(dashboard_routes(HubSource(store, config.org), settings))


def read_key(path: Path) -> str:
    """The read key in ``path``: a file of mode 0600 holding one non-empty line."""
    if path == UNSET_PATH:
        raise ConfigError('expected a key file when hub.dashboard = "private"', key=KEY_FILE)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"mode {mode & 0o777:04o} is too open; run chmod 600 on it",
                path=str(path),
                key=KEY_FILE,
            )
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read: {exc.strerror or exc}", path=str(path), key=KEY_FILE
        ) from None
    if not key:
        raise ConfigError("the key file is empty", path=str(path), key=KEY_FILE)
    return key
