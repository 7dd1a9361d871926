"""The commands about this machine and its daemon: check the config and the host, list the
devices, prepare a track's data, check a train.py, run the daemon, and drive a running one
through its control socket (``status``, ``pause``, ``resume``, ``finish``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anyio

from autoresearchd.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    SEARCH_HELP,
    Subcommands,
    config_option,
    config_or_defaults,
    query_config,
    use_colour,
)
from autoresearchd.config import Config
from autoresearchd.config_loader import load_config
from autoresearchd.control import request, socket_path
from autoresearchd.errors import MutationError
from autoresearchd.gpus import Discovery, Gpus, device_records, plan_devices, select_gpus
from autoresearchd.logs import configure_logging
from autoresearchd.models import Device
from autoresearchd.preflight import check_host
from autoresearchd.report import status_text
from autoresearchd.tracks import DEFAULT_DATA_DIR, prepare_track
from autoresearchd.trust import check_params_only

#: What ``pause``, ``resume`` and ``finish`` do, as their help says.
CONTROL_HELP = {
    "pause": "stop a device's run now and take no more work",
    "resume": "let a paused device take work again",
    "finish": "let a device finish its current run, then pause",
}


def add_machine_commands(commands: Subcommands) -> None:
    check = commands.add_parser(
        "check-config", help="validate a config file and the paths it names"
    )
    check.add_argument(
        "path", type=Path, nargs="?", help=f"the TOML config to check (default: {SEARCH_HELP})"
    )
    check.set_defaults(handler=cmd_check_config)

    gpus = commands.add_parser("gpus", help="list the devices workers would use")
    config_option(gpus, required=False)
    gpus.add_argument("--json", action="store_true", help="print a JSON list")
    gpus.set_defaults(handler=cmd_gpus)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    config_option(run)
    run.set_defaults(handler=cmd_run)

    prepare = commands.add_parser("prepare", help="download or generate a track's data")
    prepare.add_argument("--track", required=True, help="synthetic, shakespeare or text:<path>")
    prepare.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR", help="where data lives"
    )
    prepare.set_defaults(handler=cmd_prepare)


def add_trust_command(commands: Subcommands) -> None:
    trust = commands.add_parser(
        "trust-check", help="accept a train.py only if it changes hyperparameter values alone"
    )
    trust.add_argument("baseline", type=Path, help="the trusted train.py")
    trust.add_argument("candidate", type=Path, help="the train.py to judge")
    trust.set_defaults(handler=cmd_trust_check)


def add_control_commands(commands: Subcommands) -> None:
    status = commands.add_parser("status", help="show the running daemon's devices and runs")
    config_option(status, required=False)
    status.add_argument("--json", action="store_true", help="print a JSON object")
    status.set_defaults(handler=cmd_status)
    for action, text in CONTROL_HELP.items():
        parser = commands.add_parser(action, help=text)
        config_option(parser, required=False)
        parser.add_argument("device", nargs="?", help="index or UUID (default: every device)")
        parser.set_defaults(handler=cmd_control, action=action)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = query_config(args.path)
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
    config = config_or_defaults(args.config)
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


def cmd_status(args: argparse.Namespace) -> int:
    config = query_config(args.config)
    reply = anyio.run(request, socket_path(config.daemon.state_dir), "status")
    if args.json:
        print(json.dumps(reply["status"], indent=2))
    else:
        print(status_text(reply["status"], colour=use_colour()))
    return EXIT_OK


def cmd_control(args: argparse.Namespace) -> int:
    config = query_config(args.config)
    path = socket_path(config.daemon.state_dir)
    reply = anyio.run(request, path, args.action, args.device)
    past = {"pause": "paused", "resume": "resumed", "finish": "finishing, then paused"}
    print(f"{past[args.action]}: {', '.join(reply['devices'])}")
    return EXIT_OK
