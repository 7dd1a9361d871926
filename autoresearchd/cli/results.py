"""The commands that read what the collective memory holds: recent results, the best of a
track and of each tier and its history, the progress plot, and this machine's dashboard.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio

from autoresearchd.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    Subcommands,
    config_option,
    positive_int,
    query_config,
    use_colour,
)
from autoresearchd.config import Config
from autoresearchd.config_loader import load_config
from autoresearchd.memory import BestChange, memory_exists, open_memory
from autoresearchd.models import Best, Result
from autoresearchd.report import (
    TIERS,
    bests_json,
    bests_table,
    format_best,
    results_json,
    results_table,
)
from autoresearchd.standing import flags

DEFAULT_RESULTS_LIMIT = 20
#: Results read beyond those shown, so a replicate shown is numbered from its first run.
REPLICATE_LOOKBACK = 50


def add_memory_commands(commands: Subcommands) -> None:
    results = commands.add_parser("results", help="list recent results, newest first")
    config_option(results, required=False)
    results.add_argument("--json", action="store_true", help="print a JSON list")
    results.add_argument("--full", action="store_true", help="include train_py in --json")
    results.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULT_RESULTS_LIMIT,
        metavar="N",
        help=f"show at most N results (default: {DEFAULT_RESULTS_LIMIT})",
    )
    results.add_argument("--track", metavar="T", help="the track (default: the configured one)")
    results.set_defaults(handler=cmd_results)

    best = commands.add_parser("best", help="show the best val_bpb of a track and of each tier")
    config_option(best, required=False)
    best.add_argument("--json", action="store_true", help="print a JSON object")
    best.add_argument("--full", action="store_true", help="include train_py in --json")
    best.add_argument("--track", metavar="T", help="the track (default: the configured one)")
    best.add_argument("--history", action="store_true", help="show every change of the best")
    best.set_defaults(handler=cmd_best)


def add_view_commands(commands: Subcommands) -> None:
    progress = commands.add_parser("progress", help="plot val_bpb over time to a PNG")
    config_option(progress, required=False)
    progress.add_argument("--out", type=Path, default=Path("progress.png"), metavar="PNG")
    progress.add_argument("--track", metavar="T", help="the track (default: the configured one)")
    progress.set_defaults(handler=cmd_progress)
    dashboard = commands.add_parser("dashboard", help="serve this machine's web dashboard")
    config_option(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8766, help="port (default: 8766)")
    dashboard.set_defaults(handler=cmd_dashboard)


def cmd_results(args: argparse.Namespace) -> int:
    config = query_config(args.config)
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
    config = query_config(args.config)
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


def cmd_progress(args: argparse.Namespace) -> int:
    from autoresearchd.plot import plot_progress, prepared_floor  # matplotlib: an extra

    config = query_config(args.config)
    track = args.track or config.experiment.track
    results = anyio.run(_read_results, config, track, None)
    if not results:
        print(f"autoresearchd: no results yet for track {track}", file=sys.stderr)
        return EXIT_REFUSED
    floor = prepared_floor(config.experiment.data_dir, track)
    drawn = plot_progress(results, args.out, title=f"autoresearchd: {track}", floor=floor)
    print(f"{args.out}: {drawn} runs, {len(results) - drawn} without val_bpb")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autoresearchd.dashboard.solo import serve  # jinja2 and uvicorn: the hub extra

    anyio.run(serve, load_config(args.config), args.host, args.port)
    return EXIT_OK
