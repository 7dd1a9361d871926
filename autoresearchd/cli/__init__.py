"""The ``autoresearchd`` command line: parse arguments, call one function, set the exit code.

This package stays thin. Each subcommand is a small ``cmd_*`` function, registered in
:func:`build_parser` by the module that holds it: :mod:`~autoresearchd.cli.machine` (this
machine and its daemon), :mod:`~autoresearchd.cli.results` (what the memory holds) and
:mod:`~autoresearchd.cli.hub` (a hub and the agent's identity on it); the work itself lives in
the modules they call. Errors we raise on purpose (:class:`AutoresearchdError`) print one
line to stderr and exit 2, never a traceback. Nothing imports this package.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from autoresearchd import __version__
from autoresearchd.cli.common import EXIT_BROKEN_PIPE, EXIT_REFUSED, EXIT_USAGE, Handler
from autoresearchd.cli.hub import add_hub_commands, add_identity_commands
from autoresearchd.cli.machine import add_control_commands, add_machine_commands, add_trust_command
from autoresearchd.cli.results import add_memory_commands, add_view_commands
from autoresearchd.errors import AutoresearchdError, DaemonNotRunning
from autoresearchd.logs import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here, not at exit, so that a reader gone early (``| head``) is met below.
            sys.stdout.flush()
    except BrokenPipeError:
        # Nobody reads the rest: say nothing more, and let the exit-time flush go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands print their answer on stdout, so diagnostics must not mix into it.
    configure_logging("auto", "warning", sys.stderr)
    handler: Handler = args.handler
    try:
        return handler(args)
    except DaemonNotRunning as exc:
        print(f"autoresearchd: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except AutoresearchdError as exc:
        print(f"autoresearchd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoresearchd",
        description="Collaborative ML research: one worker per GPU improving a shared train.py.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    # The order here is the order ``--help`` lists them in.
    add_machine_commands(commands)
    add_memory_commands(commands)
    add_identity_commands(commands)
    add_trust_command(commands)
    add_hub_commands(commands)
    add_control_commands(commands)
    add_view_commands(commands)
    return parser
