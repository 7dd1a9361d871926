"""The ``autoresearchd`` command line: parse arguments, call one function, set the exit code.

This module stays thin. Each subcommand is a small ``cmd_*`` function registered in
:func:`build_parser`; the work itself lives in the modules it calls. Errors we raise on
purpose (:class:`AutoresearchdError`) print one line to stderr and exit 2, never a
traceback. Nothing imports this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio

from autoresearchd import __version__
from autoresearchd.config import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    UNSET_PATH,
    USER_CONFIG,
    Config,
    config_search_path,
    load_config,
    parse_config,
)
from autoresearchd.control import request, socket_path
from autoresearchd.errors import (
    AutoresearchdError,
    ConfigError,
    DaemonNotRunning,
    MutationError,
)
from autoresearchd.gpus import Discovery, Gpus, device_records, plan_devices, select_gpus
from autoresearchd.logs import configure_logging
from autoresearchd.memory import BestChange, memory_exists, open_memory
from autoresearchd.memory.ensue import (
    check_key_file,
    claim_invite,
    read_api_key,
    register_agent,
    whoami,
    write_api_key,
)
from autoresearchd.models import Best, Device, Result
from autoresearchd.preflight import check_host
from autoresearchd.report import (
    TIERS,
    bests_json,
    bests_table,
    format_best,
    results_json,
    results_table,
    status_text,
)
from autoresearchd.standing import flags
from autoresearchd.tracks import DEFAULT_DATA_DIR, prepare_track
from autoresearchd.trust import check_params_only

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
#: What a shell reports for a program killed by SIGPIPE, as ``seq 1000000 | head -1`` is.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
DEFAULT_RESULTS_LIMIT = 20
#: Results read beyond those shown, so a replicate shown is numbered from its first run.
REPLICATE_LOOKBACK = 50
#: Where commands without ``--config`` look, as their help says.
SEARCH_HELP = f"${CONFIG_ENV}, else {SYSTEM_CONFIG}, else ~/.config/{USER_CONFIG}"

Handler = Callable[[argparse.Namespace], int]


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

    check = commands.add_parser(
        "check-config", help="validate a config file and the paths it names"
    )
    check.add_argument(
        "path", type=Path, nargs="?", help=f"the TOML config to check (default: {SEARCH_HELP})"
    )
    check.set_defaults(handler=cmd_check_config)

    gpus = commands.add_parser("gpus", help="list the devices workers would use")
    _config_option(gpus, required=False)
    gpus.add_argument("--json", action="store_true", help="print a JSON list")
    gpus.set_defaults(handler=cmd_gpus)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    _config_option(run)
    run.set_defaults(handler=cmd_run)

    prepare = commands.add_parser("prepare", help="download or generate a track's data")
    prepare.add_argument("--track", required=True, help="synthetic, shakespeare or text:<path>")
    prepare.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR", help="where data lives"
    )
    prepare.set_defaults(handler=cmd_prepare)
    _add_memory_commands(commands)
    _add_identity_commands(commands)

    trust = commands.add_parser(
        "trust-check", help="accept a train.py only if it changes hyperparameter values alone"
    )
    trust.add_argument("baseline", type=Path, help="the trusted train.py")
    trust.add_argument("candidate", type=Path, help="the train.py to judge")
    trust.set_defaults(handler=cmd_trust_check)
    _add_hub_commands(commands)
    _add_control_commands(commands)
    return parser


def _config_option(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
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


def _query_config(path: Path | None) -> Config:
    """The config a command reads: ``--config``, else the first one found."""
    if path is None and (path := find_config()) is None:
        places = " or ".join(str(p) for p, _ in config_search_path(os.environ))
        raise ConfigError(
            f"no readable config file: pass --config PATH, set ${CONFIG_ENV}, or create {places}"
        )
    return load_config(path)


def _load(path: Path | None) -> Config:
    """Like :func:`_query_config`, but with no file anywhere the defaults will do."""
    if path is None and (path := find_config()) is None:
        return parse_config({})
    return load_config(path)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _query_config(args.path)
    check_host(config)
    print(f"{config.source}: ok")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    check_host(config)  # before the daemon starts: a bad path fails once, not every run
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    # Imported here so light commands (check-config, gpus) skip the daemon's imports.
    from autoresearchd.daemon import run_daemon

    return run_daemon(args.config)


def cmd_trust_check(args: argparse.Namespace) -> int:
    baseline, candidate = _read_script(args.baseline), _read_script(args.candidate)
    try:
        verdict = check_params_only(baseline, candidate)
    except MutationError as exc:  # the trusted file itself is malformed: say which one
        raise MutationError(f"{args.baseline}: {exc}") from None
    print(f"{args.candidate}: {'ok' if verdict.ok else verdict.reason}")
    return EXIT_OK if verdict.ok else EXIT_REFUSED


def _read_script(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MutationError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MutationError(f"{path}: not UTF-8 text") from None


def cmd_gpus(args: argparse.Namespace) -> int:
    config = _load(args.config)
    devices, found = anyio.run(_discover_devices, config)
    if args.json:
        print(json.dumps(device_records(devices, found), indent=2))
    else:
        print(_device_table(devices))
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    prepared = prepare_track(args.track, args.data_dir)
    print(f"{prepared.name}: {prepared.path}")
    print(f"train_tokens: {prepared.train_tokens}  val_tokens: {prepared.val_tokens}")
    if prepared.entropy_floor_bpb is not None:
        print(f"entropy_floor_bpb: {prepared.entropy_floor_bpb:.6f}")
    return EXIT_OK


async def _discover_devices(config: Config) -> tuple[list[Device], Discovery]:
    async with Gpus() as gpus:
        found = await gpus.discover()
    return plan_devices(select_gpus(found.gpus, config.devices), config.devices), found


def _device_table(devices: list[Device]) -> str:
    if not devices:
        return "no devices: no GPU found and no CPU workers configured"
    rows = [("INDEX", "KIND", "NAME", "UUID", "MEMORY", "TIER", "TEMP", "PROCS")]
    for d in devices:
        temp = "-" if d.temperature_c is None else f"{d.temperature_c}C"
        memory = f"{d.memory_gb:g} GB" if d.is_gpu else "-"
        rows.append(
            (str(d.index), d.kind, d.name, d.uuid, memory, d.tier, temp, str(len(d.processes)))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _add_memory_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    results = commands.add_parser("results", help="list recent results, newest first")
    _config_option(results, required=False)
    results.add_argument("--json", action="store_true", help="print a JSON list")
    results.add_argument("--full", action="store_true", help="include train_py in --json")
    results.add_argument(
        "--limit",
        type=_positive_int,
        default=DEFAULT_RESULTS_LIMIT,
        metavar="N",
        help=f"show at most N results (default: {DEFAULT_RESULTS_LIMIT})",
    )
    results.add_argument("--track", metavar="T", help="the track (default: the configured one)")
    results.set_defaults(handler=cmd_results)

    best = commands.add_parser("best", help="show the best val_bpb of a track and of each tier")
    _config_option(best, required=False)
    best.add_argument("--json", action="store_true", help="print a JSON object")
    best.add_argument("--full", action="store_true", help="include train_py in --json")
    best.add_argument("--track", metavar="T", help="the track (default: the configured one)")
    best.add_argument("--history", action="store_true", help="show every change of the best")
    best.set_defaults(handler=cmd_best)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def cmd_results(args: argparse.Namespace) -> int:
    config = _query_config(args.config)
    track = args.track or config.experiment.track
    read = anyio.run(_read_results, config, track, args.limit + REPLICATE_LOOKBACK)
    results, older = read[: args.limit], read[args.limit :]
    if args.json:
        print(json.dumps(results_json(results, full=args.full), indent=2, allow_nan=False))
        return EXIT_OK
    # A hub sets its own replicate count; only our own memory follows ours.
    wanted = config.experiment.replicates if config.memory.backend == "sqlite" else None
    table = results_table(
        results, track=track, colour=use_colour(), replicates=wanted or None, older=older
    )
    print(table)
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    config = _query_config(args.config)
    track = args.track or config.experiment.track
    if args.history:
        return _best_history(config, track, as_json=args.json)
    best, tiers = anyio.run(_read_bests, config, track)
    if args.json:
        report = bests_json(track, best, tiers, full=args.full)
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(bests_table(track, best, tiers))
    return EXIT_OK


async def _read_results(config: Config, track: str, limit: int | None) -> list[Result]:
    if not memory_exists(config):  # reading must not create the state folder
        return []
    async with open_memory(config) as memory:
        return await memory.results(track, limit)


async def _read_bests(config: Config, track: str) -> tuple[Best | None, dict[str, Best]]:
    if not memory_exists(config):
        return None, {}
    async with open_memory(config) as memory:
        best = await memory.get_best(track)
        tiers = {tier: b for tier in TIERS if (b := await memory.get_best(track, tier))}
    return best, tiers


def _best_history(config: Config, track: str, *, as_json: bool) -> int:
    changes, flagged = anyio.run(_read_best_history, config, track)
    if as_json:
        listed = [dataclasses.asdict(c) | {"flag": flagged.get(c.agent_id, "")} for c in changes]
        print(json.dumps(listed, indent=2, allow_nan=False))
        return EXIT_OK
    if not changes:
        print(f"{track}: the best has not moved yet")
        return EXIT_OK
    # Claims by an agent whose runs disagree with other agents' are flagged (worker/confirming.py).
    flag = any(c.agent_id in flagged for c in changes)
    rows: list[tuple[str, ...]] = [
        ("TIME", "AGENT", "VAL_BPB", "SHA", "DESCRIPTION", *(("FLAG",) * flag))
    ]
    for change in changes:
        when = datetime.fromtimestamp(change.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        sha = change.train_py_sha256[:12]
        cells = (when, change.agent_id, format_best(change.val_bpb), sha, change.description)
        rows.append((*cells, *((flagged.get(change.agent_id, ""),) * flag)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for line in rows:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


async def _read_best_history(config: Config, track: str) -> tuple[list[BestChange], dict[str, str]]:
    if not memory_exists(config):
        return [], {}
    async with open_memory(config) as memory:
        changes = await memory.best_history(track, limit=None)
        return changes, flags(await memory.results(track, limit=None))


def _add_identity_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    register = commands.add_parser(
        "register", help="register this agent with the hub at memory.url and store its key"
    )
    _config_option(register)
    register.add_argument("--name", required=True, help="the agent name to register")
    register.add_argument("--email", help="where the hub sends the verification link")
    register.add_argument(
        "--force", action="store_true", help="replace an existing memory.api_key_file"
    )
    register.set_defaults(handler=cmd_register)
    who = commands.add_parser("whoami", help="show this agent's name and verification state")
    _config_option(who, required=False)
    who.set_defaults(handler=cmd_whoami)
    join = commands.add_parser("join", help="join the org of an invite (memory.url's network)")
    _config_option(join)
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
    config = _query_config(args.config)
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


def _add_hub_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = commands.add_parser("hub", help="run or set up a hub that speaks the Ensue protocol")
    hub_commands = hub.add_subparsers(title="hub commands", metavar="COMMAND", required=True)
    serve = hub_commands.add_parser("serve", help="serve the hub until stopped")
    _config_option(serve)
    serve.add_argument(
        "--migrate", action="store_true", help="apply PostgreSQL schema migrations first"
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_hub_serve)
    migrate = hub_commands.add_parser("migrate", help="apply the database's schema migrations")
    _config_option(migrate)
    migrate.set_defaults(handler=cmd_hub_migrate)
    init = hub_commands.add_parser("init", help="create the org, print an admin key, seed best/")
    _config_option(init)
    init.add_argument("--baseline", type=Path, metavar="TRAIN_PY", help="seed best/ with it")
    init.set_defaults(handler=cmd_hub_init)
    revoke = hub_commands.add_parser("revoke", help="revoke an agent's API key, at once")
    _config_option(revoke)
    revoke.add_argument("agent", help="the agent whose key stops working")
    revoke.set_defaults(handler=cmd_hub_revoke)


def cmd_hub_serve(args: argparse.Namespace) -> int:
    from autoresearchd.hub.app import fast_loop_options, serve  # the hub extra only

    config = load_config(args.config)
    configure_logging(config.daemon.log_format, config.daemon.log_level, sys.stderr)
    anyio.run(
        lambda: serve(config, migrate=args.migrate, worker=args.worker),
        backend_options=fast_loop_options(),
    )
    return EXIT_OK


def cmd_hub_migrate(args: argparse.Namespace) -> int:
    from autoresearchd.hub.app import migrate_hub

    config = load_config(args.config)
    configure_logging(config.daemon.log_format, config.daemon.log_level, sys.stderr)
    print(anyio.run(migrate_hub, config))
    return EXIT_OK


def cmd_hub_init(args: argparse.Namespace) -> int:
    from autoresearchd.hub.app import init_hub

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
    from autoresearchd.hub.app import revoke_agent

    config = load_config(args.config)
    configure_logging(config.daemon.log_format, config.daemon.log_level, sys.stderr)
    if not anyio.run(revoke_agent, config, args.agent):
        print(f"error: no agent {args.agent} with a live key on this hub", file=sys.stderr)
        return EXIT_REFUSED
    print(f"revoked the API key of {args.agent}")
    return EXIT_OK


def use_colour() -> bool:
    """Colour only for a person at a terminal, and never when NO_COLOR is set."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autoresearchd.dashboard.solo import serve  # jinja2 and uvicorn: the hub extra

    anyio.run(serve, load_config(args.config), args.host, args.port)
    return EXIT_OK


def _add_control_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser("status", help="show the running daemon's devices and runs")
    _config_option(status, required=False)
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(handler=cmd_status)
    helps = {
        "pause": "stop a device's run now and take no more work",
        "resume": "let a paused device take work again",
        "finish": "let a device finish its current run, then pause",
    }
    for action, text in helps.items():
        parser = commands.add_parser(action, help=text)
        _config_option(parser, required=False)
        parser.add_argument("device", nargs="?", help="index or UUID (default: every device)")
        parser.set_defaults(handler=cmd_control, action=action)
    progress = commands.add_parser("progress", help="plot val_bpb over time to a PNG")
    _config_option(progress, required=False)
    progress.add_argument("--out", type=Path, default=Path("progress.png"), metavar="PNG")
    progress.add_argument("--track", metavar="T", help="the track (default: the configured one)")
    progress.set_defaults(handler=cmd_progress)
    dashboard = commands.add_parser("dashboard", help="serve this machine's web dashboard")
    _config_option(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8766, help="port (default: 8766)")
    dashboard.set_defaults(handler=cmd_dashboard)


def cmd_status(args: argparse.Namespace) -> int:
    config = _query_config(args.config)
    reply = anyio.run(request, socket_path(config.daemon.state_dir), "status")
    if args.json:
        print(json.dumps(reply["status"], indent=2))
    else:
        print(status_text(reply["status"], colour=use_colour()))
    return EXIT_OK


def cmd_control(args: argparse.Namespace) -> int:
    config = _query_config(args.config)
    path = socket_path(config.daemon.state_dir)
    reply = anyio.run(request, path, args.action, args.device)
    past = {"pause": "paused", "resume": "resumed", "finish": "finishing, then paused"}
    print(f"{past[args.action]}: {', '.join(reply['devices'])}")
    return EXIT_OK


def cmd_progress(args: argparse.Namespace) -> int:
    from autoresearchd.plot import plot_progress, prepared_floor  # matplotlib: an extra

    config = _query_config(args.config)
    track = args.track or config.experiment.track
    results = anyio.run(_read_results, config, track, None)
    if not results:
        print(f"autoresearchd: no results yet for track {track}", file=sys.stderr)
        return EXIT_REFUSED
    floor = prepared_floor(config.experiment.data_dir, track)
    drawn = plot_progress(results, args.out, title=f"autoresearchd: {track}", floor=floor)
    print(f"{args.out}: {drawn} runs, {len(results) - drawn} without val_bpb")
    return EXIT_OK
