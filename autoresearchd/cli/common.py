"""What every subcommand shares: exit codes, the ``--config`` option, and finding a config.

A command given no ``--config`` looks where :func:`~autoresearchd.config_loader.config_search_path`
says and names on stderr the file it used; :func:`query_config` insists on finding one and
:func:`config_or_defaults` settles for the defaults.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeAlias

from autoresearchd.config import Config
from autoresearchd.config_loader import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    USER_CONFIG,
    config_search_path,
    load_config,
    parse_config,
)
from autoresearchd.errors import ConfigError

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
#: What a shell reports for a program killed by SIGPIPE, as ``seq 1000000 | head -1`` is.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
#: Where commands without ``--config`` look, as their help says.
SEARCH_HELP = f"${CONFIG_ENV}, else {SYSTEM_CONFIG}, else ~/.config/{USER_CONFIG}"

Handler = Callable[[argparse.Namespace], int]
#: What ``add_subparsers`` returns, which each command module registers its commands on.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def config_option(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--config``; a command that need not be given one looks where :func:`find_config` does."""
    parser.add_argument(
        "--config",
        type=Path,
        required=required,
        metavar="PATH",
        help="the TOML config file" + ("" if required else f" (default: {SEARCH_HELP})"),
    )


def find_config(environ: Mapping[str, str] | None = None) -> Path | None:
    """The first readable config file on the search path (saying on stderr which), or None."""
    environ = os.environ if environ is None else environ
    for path, how in config_search_path(environ):
        if _readable_file(path):
            print(f"autoresearchd: config {path} (from {how})", file=sys.stderr)
            return path
    if named := environ.get(CONFIG_ENV):
        raise ConfigError(f"${CONFIG_ENV} names no readable file", path=named)
    return None


def _readable_file(path: Path) -> bool:
    try:
        return path.is_file() and os.access(path, os.R_OK)
    except OSError:  # a folder above it is private to another user
        return False


def query_config(path: Path | None) -> Config:
    """The config a command reads: ``--config``, else the first one found."""
    if path is None and (path := find_config()) is None:
        places = " or ".join(str(p) for p, _ in config_search_path(os.environ))
        raise ConfigError(
            f"no readable config file: pass --config PATH, set ${CONFIG_ENV}, or create {places}"
        )
    return load_config(path)


def config_or_defaults(path: Path | None) -> Config:
    """Like :func:`query_config`, but with no file anywhere the defaults will do."""
    if path is None and (path := find_config()) is None:
        return parse_config({})
    return load_config(path)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def use_colour() -> bool:
    """Colour only for a person at a terminal, and never when NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")
