"""The commands that set up, run or join a hub: ``hub serve``, ``hub migrate``, ``hub init``
and ``hub revoke`` on the hub's host, and ``register``, ``whoami`` and ``join`` on an agent's,
against the hub at ``memory.url``. The hub's own modules are imported only when a hub command
runs: they need the hub extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from autoresearchd.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    Subcommands,
    config_option,
    query_config,
)
from autoresearchd.config import UNSET_PATH, Config
from autoresearchd.config_loader import load_config
from autoresearchd.errors import ConfigError
from autoresearchd.logs import configure_logging
from autoresearchd.memory.ensue_client.identity import (
    check_key_file,
    claim_invite,
    read_api_key,
    register_agent,
    whoami,
    write_api_key,
)


def add_identity_commands(commands: Subcommands) -> None:
    register = commands.add_parser(
        "register", help="register this agent with the hub at memory.url and store its key"
    )
    config_option(register)
    register.add_argument("--name", required=True, help="the agent name to register")
    register.add_argument("--email", help="where the hub sends the verification link")
    register.add_argument(
        "--force", action="store_true", help="replace an existing memory.api_key_file"
    )
    register.set_defaults(handler=cmd_register)
    who = commands.add_parser("whoami", help="show this agent's name and verification state")
    config_option(who, required=False)
    who.set_defaults(handler=cmd_whoami)
    join = commands.add_parser("join", help="join the org of an invite (memory.url's network)")
    config_option(join)
    join.add_argument("--invite", required=True, help="the invite token the org gave out")
    join.set_defaults(handler=cmd_join)


def _hub_settings(config: Config) -> tuple[str, Path]:
    """memory.url and memory.api_key_file, which both identity commands need."""
    memory = config.memory
    unset = (("url", not memory.url), ("api_key_file", memory.api_key_file == UNSET_PATH))
    for key, missing in unset:
        if missing:
            raise ConfigError(
                "expected a value to talk to a hub", path=str(config.source), key=f"memory.{key}"
            )
    return memory.url, memory.api_key_file


def cmd_register(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    url, key_file = _hub_settings(config)
    check_key_file(key_file, force=args.force)  # before registering: a key we cannot save is lost
    registration = anyio.run(register_agent, url, args.name, args.email)
    write_api_key(key_file, registration.api_key, force=args.force)
    print(f"registered {registration.agent}; the API key is in {key_file} (mode 0600)")
    if config.daemon.agent != registration.agent:
        print(
            f'set daemon.agent = "{registration.agent}" in {config.source}: the hub accepts'
            " results only under the registered name"
        )
    if registration.claim_url:
        print(f"verify the agent by opening: {registration.claim_url}")
    else:
        print(f"check {args.email}'s inbox for the verification link")
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    config = query_config(args.config)
    url, key_file = _hub_settings(config)
    identity = anyio.run(whoami, url, read_api_key(key_file))
    state = "verified" if identity.verified else "not verified (check your inbox)"
    print(f"{identity.agent}: {state}{' (admin)' if identity.admin else ''}")
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    url, key_file = _hub_settings(config)
    reply = anyio.run(claim_invite, url, read_api_key(key_file), args.invite)
    org = reply.get("org") or config.memory.org
    print(f"{config.daemon.agent} joined @{org}")
    return EXIT_OK


def add_hub_commands(commands: Subcommands) -> None:
    hub = commands.add_parser("hub", help="run or set up a hub that speaks the Ensue protocol")
    hub_commands = hub.add_subparsers(title="hub commands", metavar="COMMAND", required=True)
    serve = hub_commands.add_parser("serve", help="serve the hub until stopped")
    config_option(serve)
    serve.add_argument(
        "--migrate", action="store_true", help="apply PostgreSQL schema migrations first"
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_hub_serve)
    migrate = hub_commands.add_parser("migrate", help="apply the database's schema migrations")
    config_option(migrate)
    migrate.set_defaults(handler=cmd_hub_migrate)
    init = hub_commands.add_parser("init", help="create the org, print an admin key, seed best/")
    config_option(init)
    init.add_argument("--baseline", type=Path, metavar="TRAIN_PY", help="seed best/ with it")
    init.set_defaults(handler=cmd_hub_init)
    revoke = hub_commands.add_parser("revoke", help="revoke an agent's API key, at once")
    config_option(revoke)
    revoke.add_argument("agent", help="the agent whose key stops working")
    revoke.set_defaults(handler=cmd_hub_revoke)


def cmd_hub_serve(args: argparse.Namespace) -> int:
    from autoresearchd.hub.serve import fast_loop_options, serve  # the hub extra only

    config = load_config(args.config)
    configure_logging(config.daemon.log_format, config.daemon.log_level, sys.stderr)
    anyio.run(
        lambda: serve(config, migrate=args.migrate, worker=args.worker),
        backend_options=fast_loop_options(),
    )
    return EXIT_OK


def cmd_hub_migrate(args: argparse.Namespace) -> int:
    from autoresearchd.hub.admin import migrate_hub

    config = load_config(args.config)
    configure_logging(config.daemon.log_format, config.daemon.log_level, sys.stderr)
    print(anyio.run(migrate_hub, config))
    return EXIT_OK


def cmd_hub_init(args: argparse.Namespace) -> int:
    from autoresearchd.hub.admin import init_hub

    config = load_config(args.config)
    api_key = anyio.run(init_hub, config, args.baseline)
    # The label goes to stderr, so `key=$(autoresearchd hub init ...)` still gets the bare key.
    print(
        f"The admin API key of @{config.hub.org} follows. Save it now (in a file of mode 0600):"
        " the hub stores only its hash and cannot show it again.",
        file=sys.stderr,
        flush=True,
    )
    print(api_key)
    return EXIT_OK


def cmd_hub_revoke(args: argparse.Namespace) -> int:
    from autoresearchd.hub.admin import revoke_agent

    config = load_config(args.config)
    configure_logging(config.daemon.log_format, config.daemon.log_level, sys.stderr)
    if not anyio.run(revoke_agent, config, args.agent):
        print(f"error: no agent {args.agent} with a live key on this hub", file=sys.stderr)
        return EXIT_REFUSED
    print(f"revoked the API key of {args.agent}")
    return EXIT_OK
