"""The control socket: how ``status``, ``pause``, ``resume`` and ``finish`` reach a running daemon.

The daemon listens on a unix stream socket, ``<state_dir>/control.sock``, created with
mode 0600 before it gets its public name, and answers only peers running as its own user
(or root). Each connection carries one JSON line each way: a request such as
``{"command": "pause", "device": "0"}`` and a reply ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. The daemon side is anything that satisfies
:class:`Controllable`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from autoresearchd.errors import ControlError, DaemonNotRunning
from autoresearchd.models import Device
from autoresearchd.statedir import StateDir

log = structlog.get_logger(__name__)

SOCKET_MODE = 0o600
MAX_LINE_BYTES = 64 * 1024
#: How long one request may take, on either side, before the connection is dropped.
REQUEST_TIMEOUT_S = 5.0
#: Commands that change devices; ``status`` only reads.
ACTIONS = ("pause", "resume", "finish")
COMMANDS = ("status", *ACTIONS)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


def socket_path(state_dir: Path) -> Path:
    return StateDir(state_dir).socket


class Controllable(Protocol):
    """What the control socket drives. This is a Protocol: the daemon implements it."""

    async def snapshot(self) -> dict[str, Any]:
        """The daemon's state as a JSON-ready object (see ``autoresearchd status --json``)."""
        ...

    def control(self, action: str, device: str | None) -> list[str]:
        """Apply ``pause``/``resume``/``finish`` to one device (or all); the UUIDs touched."""
        ...


def match_devices(devices: Sequence[Device], ref: str | None) -> list[int]:
    """Positions of the devices ``ref`` names (an index or UUID); every device for None."""
    if ref is None:
        return list(range(len(devices)))
    found = [i for i, d in enumerate(devices) if ref in (d.uuid, str(d.index))]
    if not found:
        known = ", ".join(d.uuid for d in devices)
        raise ControlError(f"no device {ref!r}: this daemon runs {known}")
    if len(found) > 1:
        names = ", ".join(devices[i].uuid for i in found)
        raise ControlError(f"device {ref!r} is ambiguous ({names}): name it by UUID")
    return found


# -- the server, inside the daemon --------------------------------------------------------


class ControlServer:
    """Serves one JSON line per connection on ``path`` until cancelled."""

    def __init__(self, path: Path, target: Controllable) -> None:
        self.path = path
        self.target = target
        self._inode: int | None = None

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started()`` fires once the socket is there."""
        try:
            listener = await self._listen()
        except OSError as exc:
            # Status is a convenience: a daemon without it still does its real work.
            log.error("control_unavailable", path=str(self.path), error=str(exc))
            task_status.started()
            return
        log.info("control_listening", path=str(self.path))
        task_status.started()
        try:
            async with listener:
                await listener.serve(self._handle)
        finally:
            self._remove()

    async def _listen(self) -> anyio.abc.SocketListener:
        # Bound and chmod'ed under a private name first, so that no one ever sees the
        # public name with looser permissions; a stale socket from a killed daemon is
        # replaced atomically.
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        listener = await anyio.create_unix_listener(staging, mode=SOCKET_MODE)
        os.replace(staging, self.path)
        self._inode = self.path.stat().st_ino
        return listener

    def _remove(self) -> None:
        try:
            if self.path.stat().st_ino == self._inode:  # not a newer daemon's socket
                self.path.unlink()
        except FileNotFoundError:
            pass

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            uid = peer_uid(stream)
            if uid not in (os.getuid(), 0):
                log.warning("control_refused", uid=uid)
                return
            with anyio.move_on_after(REQUEST_TIMEOUT_S):
                try:
                    line = await BufferedByteReceiveStream(stream).receive_until(
                        b"\n", MAX_LINE_BYTES
                    )
                    reply = await self.answer(line)
                    await stream.send(json.dumps(reply, allow_nan=False).encode() + b"\n")
                except _STREAM_ERRORS as exc:
                    log.debug("control_connection_dropped", error=str(exc) or type(exc).__name__)
                except Exception:
                    # A question about the daemon must never be able to stop it.
                    log.exception("control_request_failed")

    async def answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; a bad request gets ``ok: false`` and a reason."""
        try:
            command, device = parse_request(line)
            if command == "status":
                return {"ok": True, "status": await self.target.snapshot()}
            touched = self.target.control(command, device)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "devices": touched}


def parse_request(line: bytes) -> tuple[str, str | None]:
    """``(command, device)`` from one request line, or ControlError saying what is wrong."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError("request is not a JSON line") from None
    if not isinstance(request, dict):
        raise ControlError("request is not a JSON object")
    command, device = request.get("command"), request.get("device")
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r}: expected one of {', '.join(COMMANDS)}")
    if device is not None and not isinstance(device, str):
        raise ControlError(f"device must be a string, got {device!r}")
    return command, device


def peer_uid(stream: SocketStream) -> int:
    """The user id of the process at the other end of a unix socket (SO_PEERCRED)."""
    raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
    creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return int(_PEERCRED.unpack(creds)[1])


# -- the client, in ``autoresearchd status`` and friends ---------------------------------


async def request(path: Path, command: str, device: str | None = None) -> dict[str, Any]:
    """Send one request to the daemon listening on ``path`` and return its reply."""
    try:
        stream = await anyio.connect_unix(path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise DaemonNotRunning(
            f"the daemon is not running (nothing listens on {path})", path=str(path)
        ) from None
    except PermissionError:
        raise ControlError(
            f"{path}: permission denied (run this as the daemon's user)", path=str(path)
        ) from None
    try:
        with anyio.fail_after(REQUEST_TIMEOUT_S):
            line = await _exchange(stream, {"command": command, "device": device})
    except TimeoutError:
        raise ControlError(
            f"{path}: the daemon did not answer within {REQUEST_TIMEOUT_S:g} s", path=str(path)
        ) from None
    except _STREAM_ERRORS as exc:
        raise ControlError(f"{path}: the daemon hung up: {exc}", path=str(path)) from None
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the daemon refused the request")))
    return reply


async def _exchange(stream: SocketStream, message: Mapping[str, Any]) -> bytes:
    async with stream:
        await stream.send(json.dumps(message).encode() + b"\n")
        return await BufferedByteReceiveStream(stream).receive_until(b"\n", 16 * MAX_LINE_BYTES)
