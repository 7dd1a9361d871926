"""Structured logging: one structlog pipeline for our events and for library logs.

JSON lines go to stdout when it is not a TTY (journald, files); a console renderer is
used on a TTY. ``log_format`` overrides the choice. Library loggers (httpx, uvicorn)
go through the same processors via the stdlib bridge, so every line has one shape.
Event names are fixed snake_case strings; details travel as key/values, and
``bind_contextvars`` carries the device and run id of the current task.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

#: Libraries whose INFO chatter (one line per HTTP request) would drown our own events.
QUIET_LIBRARIES = ("httpx", "httpcore")


def choose_format(log_format: str, stream: IO[str]) -> str:
    """Resolve ``auto`` to ``console`` on a TTY and ``json`` everywhere else."""
    if log_format != "auto":
        return log_format
    return "console" if stream.isatty() else "json"


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: IO[str] | None = None
) -> None:
    """Route structlog and stdlib logging through one renderer writing to ``stream``."""
    out = stream or sys.stdout
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # Caching would pin loggers to the first configuration, which tests replace.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_formatter(choose_format(log_format, out), shared))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _formatter(fmt: str, shared: list[Any]) -> logging.Formatter:
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        tail: list[Any] = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        tail = [renderer]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
