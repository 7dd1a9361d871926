"""A throwaway PostgreSQL cluster in a temporary folder, for tests and benchmarks.

:func:`start_cluster` finds the server's programs (on ``PATH``, else Debian's
``/usr/lib/postgresql/<version>/bin``), runs ``initdb`` and ``pg_ctl start`` on a free
loopback port with trust authentication, and returns a :class:`Cluster` that creates
databases and stops and deletes everything. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` system user (which Debian's ``postgresql``
package creates) through ``runuser``. Any failure is a :class:`HubError` carrying the
server's own output, never a silent skip.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoresearchd.errors import HubError

SUPERUSER = "postgres"
DEBIAN_BIN = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 60
#: Settings for a cluster whose data may be lost: no waiting on the disk.
DISPOSABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass
class Cluster:
    """A running throwaway cluster; ``url(name)`` reaches database ``name`` as superuser."""

    root: Path
    port: int
    run_as: tuple[str, ...]
    bin_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str = "template1") -> str:
        """Create database ``name`` as a copy of ``template``; its URL."""
        import psycopg  # the hub extra; only callers that start a cluster need it

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name + template):
            raise HubError(f"expected plain database names, got {name!r} and {template!r}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}".encode())
        return self.url(name)

    def create_schema(self, name: str) -> str:
        """Create schema ``name`` in database ``postgres``; a URL whose search_path is it.

        Much faster than a database of its own, and just as separate for the hub.
        """
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise HubError(f"expected a plain schema name, got {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}".encode())
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        """Stop the server at once and delete its folder."""
        pg_ctl = str(self.bin_dir / "pg_ctl")
        command = [*self.run_as, pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"]
        _run("pg_ctl stop", command, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def data(self) -> Path:
        return self.root / "data"


def find_bin_dir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``; a HubError says how to get them."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(
        (p for p in DEBIAN_BIN.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1]
    raise HubError(
        "cannot find initdb and pg_ctl on PATH or in /usr/lib/postgresql/*/bin:"
        " install the PostgreSQL server (Debian: apt-get install postgresql)"
    )


def _runner() -> tuple[tuple[str, ...], pwd.struct_passwd | None]:
    if os.geteuid() != 0:
        return (), None
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise HubError(
            f"PostgreSQL will not run as root and there is no {SUPERUSER!r} user to run it:"
            " create one (apt-get install postgresql does)"
        ) from None
    return ("runuser", "-u", SUPERUSER, "--"), user


def _run(what: str, command: list[str], *, check: bool = True) -> str:
    """Run ``command``; its output, or (with ``check``) a HubError naming ``what`` failed."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = _one_line(done.stdout + done.stderr)
    if check and done.returncode != 0:
        raise HubError(f"{what} failed (exit {done.returncode}): {output}")
    return output


def _one_line(output: str) -> str:
    return " | ".join(line.strip() for line in output.splitlines() if line.strip())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_cluster(settings: Mapping[str, str] = DISPOSABLE) -> Cluster:
    """initdb and start a cluster in a new temporary folder; ``settings`` go to postgres."""
    bin_dir = find_bin_dir()
    run_as, user = _runner()
    root = Path(tempfile.mkdtemp(prefix="autoresearchd-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = Cluster(root, _free_port(), run_as, bin_dir)
    try:
        _initdb(cluster)
        _start(cluster, settings)
    except HubError:
        cluster.stop()
        raise
    return cluster


def _initdb(cluster: Cluster) -> None:
    _run(
        "initdb",
        [
            *cluster.run_as,
            str(cluster.bin_dir / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
    )


def _start(cluster: Cluster, settings: Mapping[str, str]) -> None:
    options = {
        "listen_addresses": "127.0.0.1",
        "port": str(cluster.port),
        "unix_socket_directories": str(cluster.root),
        "max_connections": "200",
        **settings,
    }
    log = cluster.root / "server.log"
    try:
        _run(
            "pg_ctl start",
            [
                *cluster.run_as,
                str(cluster.bin_dir / "pg_ctl"),
                "-D",
                str(cluster.data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                " ".join(f"-c {key}={value}" for key, value in options.items()),
                "start",
            ],
        )
    except HubError as exc:
        server_log = _one_line(log.read_text(errors="replace")) if log.exists() else ""
        raise HubError(f"{exc}; server log: {server_log}") from None
