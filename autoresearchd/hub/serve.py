"""Serving the hub: uvicorn over the store ``hub.database`` names, with its worker processes.

:func:`serve` runs the app (:func:`~autoresearchd.hub.app.build_app`) over a SQLite file or
``sqlite:///`` URL, or a ``postgresql://`` URL that any number of replicas may share, until
SIGTERM, which is a clean stop (exit 0). With ``hub.workers`` above one it starts the other
workers, on either store, all listening on one port.
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from autoresearchd.config import Config
from autoresearchd.errors import ConfigError
from autoresearchd.hub.admin import database_path
from autoresearchd.hub.app import build_app
from autoresearchd.hub.mail import Mailer, SmtpMailer
from autoresearchd.hub.storage.auto import open_store

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger(__name__)

#: How long a stopping hub waits for each of its other workers to finish its requests.
WORKER_STOP_S = 10.0


def mailer_for(config: Config) -> Mailer | None:
    """The hub's mailer, or None when it sends no mail; a ConfigError names what is missing."""
    hub = config.hub
    try:
        if not hub.smtp_host:
            if hub.require_email:
                raise ConfigError(
                    "expected a mail server when hub.require_email = true", key="hub.smtp_host"
                )
            return None
        return SmtpMailer(hub)
    except ConfigError as exc:
        raise ConfigError(str(exc), path=str(config.source)) from None


async def serve(config: Config, *, migrate: bool = False, worker: bool = False) -> None:
    """Run the hub under uvicorn until cancelled or signalled; ``migrate`` first if asked.

    With ``hub.workers`` above one, this process starts the other workers (each a ``hub
    serve --worker``) once the database is ready, all of them listening on one port
    (``SO_REUSEPORT``: the kernel spreads connections), and stops them when it stops.
    """
    mailer = mailer_for(config)
    store = await open_store(database_path(config), migrate=migrate, pool_size=config.hub.pool_size)
    app = build_app(store, config.hub, mailer=mailer)
    server = uvicorn_server(app, config.hub.listen_host, config.hub.listen_port)
    shared = config.hub.workers > 1
    sockets = [_listen(config.hub.listen_host, config.hub.listen_port)] if shared else None
    others = [] if worker or not shared else _start_workers(config)
    log.info("hub_serving", host=config.hub.listen_host, port=config.hub.listen_port)
    try:
        with _sigterm_is_a_clean_stop():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(store.watch)
                await server.serve(sockets=sockets)
                tasks.cancel_scope.cancel()
    finally:
        _stop_workers(others)
        await store.close()
    log.info("hub_stopped")


def uvicorn_server(app: Any, host: str, port: int) -> uvicorn.Server:
    """uvicorn as the hub runs it, with its C fast paths (httptools, and uvloop where the
    caller's loop is uvloop) whenever they are installed, and no access log."""
    import uvicorn  # the server is needed only here, not by tests that drive the app

    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    return uvicorn.Server(config)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket that the other workers' sockets may share (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def _start_workers(config: Config) -> list[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "autoresearchd", "hub", "serve", "--worker"]
    command += ["--config", str(config.source)]
    return [subprocess.Popen(command) for _ in range(config.hub.workers - 1)]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        proc.terminate()
    for proc in workers:
        try:
            proc.wait(timeout=WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fast_loop_options() -> dict[str, Any]:
    """``anyio.run`` backend options that run the hub on uvloop when it is installed."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") is not None else {}


@contextmanager
def _sigterm_is_a_clean_stop() -> Iterator[None]:
    """Let ``hub serve`` exit 0 when SIGTERM stopped it cleanly.

    uvicorn shuts down on SIGTERM and then raises the signal again under the handler it
    found, so the process dies by it (exit 143) and a service manager logs a failure. Under
    this no-op handler the signal raised again does nothing and serve returns.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
