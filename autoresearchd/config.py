"""Read a TOML config into frozen dataclasses, or fail with one clear line.

Reading is separate from building: nothing here opens sockets, NVML or databases.
Every section is a dataclass whose fields carry their defaults (named constants) and
types; one generic validator walks them, so a wrong value or an unknown key becomes a
:class:`ConfigError` naming the file, the dotted key path and what was expected.
Relative paths resolve against the config file's folder, and ``~`` expands.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import socket
import sys
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from autoresearchd.errors import ConfigError
from autoresearchd.statedir import DEFAULT_STATE_DIR, StateDir

DEFAULT_SHUTDOWN_GRACE_S = 60.0
DEFAULT_TIME_BUDGET_S = 300.0
DEFAULT_GRACE_S = 60.0
DEFAULT_KILL_GRACE_S = 10.0
DEFAULT_MIN_IMPROVEMENT = 0.001
#: The most fresh replicates a provisional candidate gets (autoresearchd/promotion.py): a
#: futility bound stops likely losers long before, so the cap is spent on close calls.
DEFAULT_REPLICATES = 16
#: The fewest fresh replicates a keep rests on.
DEFAULT_MIN_REPLICATES = 2
#: Runs of its own the incumbent is compared by; re-measured up to this.
DEFAULT_INCUMBENT_RUNS = 16
#: The chance that a candidate no better than the incumbent is kept: well below the
#: 1 in 10,000 candidates a swarm can afford, so thousands of candidates promote no noise.
DEFAULT_SIGNIFICANCE = 1e-5
DEFAULT_KEEP_RUNS = 50
#: Shares of a worker's runs spent rerunning other agents' claims: while some wait, and
#: at most, while many still lack their confirmations.
DEFAULT_CONFIRM_SHARE = 0.1
DEFAULT_CONFIRM_SHARE_MAX = 0.5
DEFAULT_MAX_TEMPERATURE_C = 85
DEFAULT_HEALTH_INTERVAL_S = 10.0
DEFAULT_MAX_CHANGES = 3
DEFAULT_MIXED_WEIGHTS = {"portfolio": 0.7, "hypotheses": 0.2, "command": 0.1}
DEFAULT_MAX_HISTORY = 2000
DEFAULT_COMMAND_TIMEOUT_S = 600.0
DEFAULT_HUB_PORT = 8765
DEFAULT_HUB_MAX_BODY_BYTES = 1_048_576
DEFAULT_HUB_MAX_VALUE_BYTES = 524_288
DEFAULT_HUB_RATE_PER_S = 50.0
DEFAULT_HUB_RATE_BURST = 200
DEFAULT_HUB_IP_RATE_PER_S = 100.0
DEFAULT_HUB_IP_RATE_BURST = 400
DEFAULT_HUB_AUTH_RATE_PER_S = 0.2
DEFAULT_HUB_AUTH_RATE_BURST = 10
DEFAULT_HUB_REPLICATES = 2
#: The most confirmations by other agents a claim is looked at with (autoresearchd/confirming.py).
DEFAULT_HUB_MAX_CONFIRMATIONS = 6
#: The chance that other agents' confirmations of a claim no better than the best move it.
DEFAULT_HUB_SIGNIFICANCE = 1e-3
DEFAULT_HUB_POOL_SIZE = 10  # PostgreSQL connections per hub process
DEFAULT_SMTP_PORT = 587
DEFAULT_WORKSPACE_IGNORE = (".git", ".venv", "__pycache__", "*.pyc", ".mypy_cache", "state")

GPUS_EXPECTED = 'expected "auto", "none" or a list of indices/UUIDs'
#: Names the config file for commands run without ``--config``.
CONFIG_ENV = "AUTORESEARCHD_CONFIG"
#: Where a packaged or system-wide install keeps its config (the systemd unit reads it).
SYSTEM_CONFIG = Path("/etc/autoresearchd/config.toml")
#: The config file inside the user's config folder (``$XDG_CONFIG_HOME`` or ``~/.config``).
USER_CONFIG = Path("autoresearchd/config.toml")
#: ``hub.database`` may name its SQLite file as a URL: ``sqlite:///rel`` or ``sqlite:////abs``.
SQLITE_URL = "sqlite:///"
POSTGRES_URLS = ("postgresql://", "postgres://")
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


#: Marks a field as a path: resolved against the config file's folder, "~" expanded.
PATH = {"path": True}
#: An empty path means "derive from other settings" (see ``_derive``).
UNSET_PATH = Path()


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    agent: str = ""  # empty: derived from the host name
    state_dir: Path = field(default=DEFAULT_STATE_DIR, metadata=PATH)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S
    on_shutdown: Literal["finish", "stop"] = "finish"
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S


@dataclass(frozen=True, slots=True)
class DevicesConfig:
    gpus: str | tuple[str, ...] = "auto"
    exclude: tuple[str, ...] = ()
    cpu_workers: int | Literal["auto"] = "auto"
    max_temperature_c: int = DEFAULT_MAX_TEMPERATURE_C
    yield_to_foreign_processes: bool = True


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    workspace: Path = field(default=Path("."), metadata=PATH)
    script: str = "train.py"
    python: str = ""  # empty: the interpreter running the daemon
    track: str = "synthetic"
    data_dir: Path = field(default=UNSET_PATH, metadata=PATH)  # empty: <state_dir>/data
    time_budget_s: float = DEFAULT_TIME_BUDGET_S
    grace_s: float = DEFAULT_GRACE_S
    kill_grace_s: float = DEFAULT_KILL_GRACE_S
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT
    replicates: int = DEFAULT_REPLICATES
    promotion: Literal["sequential", "bonferroni", "mean"] = "sequential"
    min_replicates: int = DEFAULT_MIN_REPLICATES
    incumbent_runs: int = DEFAULT_INCUMBENT_RUNS
    significance: float = DEFAULT_SIGNIFICANCE
    # Rerunning other agents' claims (autoresearchd/confirming.py): the share of runs spent
    # so while claims wait, raised toward confirm_share_max by those still short of
    # `confirmations` confirmations; none is confirmed more than max_confirmations times.
    confirm_share: float = DEFAULT_CONFIRM_SHARE
    confirm_share_max: float = DEFAULT_CONFIRM_SHARE_MAX
    confirmations: int = DEFAULT_HUB_REPLICATES
    max_confirmations: int = DEFAULT_HUB_MAX_CONFIRMATIONS
    keep_runs: int = DEFAULT_KEEP_RUNS
    workspace_ignore: tuple[str, ...] = DEFAULT_WORKSPACE_IGNORE
    trust: Literal["params-only", "sandboxed", "any"] = "params-only"
    sandbox: Literal["auto", "off", "required"] = "auto"
    # "auto": stop hopeless runs where stored curves are calibrated (calibration.py). Off by
    # default: benchmarks/early_stopping.py measures it short of its 1.5x goal on both curve
    # families.
    early_stopping: Literal["auto", "off"] = "off"


@dataclass(frozen=True, slots=True)
class ProposerConfig:
    strategy: Literal["portfolio", "perturb", "tpe", "mixed", "hypotheses", "command"] = "portfolio"
    max_changes: int = DEFAULT_MAX_CHANGES
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIXED_WEIGHTS))
    max_history: int = DEFAULT_MAX_HISTORY
    command: tuple[str, ...] = ()
    command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    share_notes: bool = True


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    backend: Literal["sqlite", "ensue"] = "sqlite"
    path: Path = field(default=UNSET_PATH, metadata=PATH)  # empty: <state_dir>/memory.sqlite
    url: str = ""
    org: str = ""
    api_key_file: Path = field(default=UNSET_PATH, metadata=PATH)
    claim_ttl_s: float = 0.0  # 0: twice the run's budget plus grace
    # The org's own track, which its bare best/ keys hold; empty: experiment.track, and
    # records that name no track (the community's) are of the track named after the org.
    org_track: str = ""


@dataclass(frozen=True, slots=True)
class HubConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_HUB_PORT
    database: str = ""  # a SQLite file (empty: <state_dir>/hub.sqlite) or a postgresql:// URL
    org: str = ""
    public_url: str = ""  # empty: claim links use the address a request came to
    max_body_bytes: int = DEFAULT_HUB_MAX_BODY_BYTES
    max_value_bytes: int = DEFAULT_HUB_MAX_VALUE_BYTES
    rate_limit_per_s: float = DEFAULT_HUB_RATE_PER_S
    rate_limit_burst: int = DEFAULT_HUB_RATE_BURST
    rate_limit_ip_per_s: float = DEFAULT_HUB_IP_RATE_PER_S
    rate_limit_ip_burst: int = DEFAULT_HUB_IP_RATE_BURST
    auth_rate_limit_per_s: float = DEFAULT_HUB_AUTH_RATE_PER_S  # per IP, on /auth routes
    auth_rate_limit_burst: int = DEFAULT_HUB_AUTH_RATE_BURST
    require_email: bool = True
    # A registration with a name alone, where email is required: off by default, so a hub
    # that verifies by email keeps doing so; on, such agents start unverified and become
    # verified only by claiming an invite (the community's way to join an org).
    name_only_registration: bool = False
    replicates: int = DEFAULT_HUB_REPLICATES
    replication: Literal["any", "other-agent"] = "other-agent"
    max_confirmations: int = DEFAULT_HUB_MAX_CONFIRMATIONS
    significance: float = DEFAULT_HUB_SIGNIFICANCE
    pool_size: int = DEFAULT_HUB_POOL_SIZE  # PostgreSQL connections per hub process
    workers: int = 1  # hub processes sharing listen_port (more than one: PostgreSQL only)
    track: str = "synthetic"  # the org's primary track: the one its bare best/ keys hold
    smtp_host: str = ""  # empty: the hub sends no email
    smtp_port: int = DEFAULT_SMTP_PORT
    smtp_security: Literal["starttls", "tls", "plain"] = "starttls"
    smtp_user: str = ""
    smtp_password_file: Path = field(default=UNSET_PATH, metadata=PATH)
    smtp_from: str = ""
    # The read-only web dashboard: "off", "public", or "private" (HTTP Basic with the key
    # in dashboard_key_file as the password).
    dashboard: Literal["off", "public", "private"] = "off"
    dashboard_key_file: Path = field(default=UNSET_PATH, metadata=PATH)
    # Known floors of val_bpb per track, drawn on the dashboard's progress chart.
    dashboard_floors: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    source: Path = Path("<defaults>")
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    proposer: ProposerConfig = field(default_factory=ProposerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    @property
    def claim_ttl_s(self) -> float:
        if self.memory.claim_ttl_s > 0:
            return self.memory.claim_ttl_s
        return 2 * (self.experiment.time_budget_s + self.experiment.grace_s)

    @property
    def run_dir(self) -> Path:
        return StateDir(self.daemon.state_dir).runs

    @property
    def outbox_dir(self) -> Path:
        return StateDir(self.daemon.state_dir).outbox


SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "devices": DevicesConfig,
    "experiment": ExperimentConfig,
    "proposer": ProposerConfig,
    "memory": MemoryConfig,
    "hub": HubConfig,
}

#: Extra checks beyond the type, keyed by dotted path: return an error text or None.
Check = Callable[[Any], str | None]


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"expected a number > 0, got {value!r}"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"expected a number >= 0, got {value!r}"


def _probability(value: Any) -> str | None:
    return None if 0 < value < 1 else f"expected a number between 0 and 1, got {value!r}"


def _share(value: Any) -> str | None:
    return None if 0 <= value <= 1 else f"expected a share from 0 to 1, got {value!r}"


def _weights(value: Any) -> str | None:
    known = ("portfolio", "perturb", "tpe", "hypotheses", "command")
    for name, weight in value.items():
        if name not in known:
            return f"unknown strategy {name!r} (expected one of {', '.join(known)})"
        if weight < 0:
            return f"expected weights >= 0, got {name} = {weight!r}"
    return None if sum(value.values()) > 0 else "expected at least one weight > 0"


def _port(value: Any) -> str | None:
    return None if 1 <= value <= 65535 else f"expected a port from 1 to 65535, got {value!r}"


def _listen_port(value: Any) -> str | None:
    # 0 asks the system for a free port, as socket.bind does.
    return None if 0 <= value <= 65535 else f"expected a port from 0 to 65535, got {value!r}"


def _hub_database(value: Any) -> str | None:
    """A SQLite file path, a ``sqlite:///`` URL or a PostgreSQL URL; never another URL."""
    if value.startswith(POSTGRES_URLS):
        return None
    if value.startswith(SQLITE_URL):
        path = value[len(SQLITE_URL) :]
        if path and path != ":memory:" and "?" not in path:
            return None
        return f"expected sqlite:///<file> or sqlite:////<absolute file>, got {_show(value)}"
    scheme = value.partition(":")[0]
    if value.startswith("sqlite:") or (":/" in value and URL_SCHEME.fullmatch(scheme)):
        # Only the scheme is shown: the rest of a URL may hold a password.
        expected = "expected a SQLite file, sqlite:///<file> or postgresql://..."
        return f'{expected}, got a "{scheme}:" URL'
    return None


def _cpu_workers(value: Any) -> str | None:
    if value == "auto" or value >= 0:
        return None
    return f'expected "auto" or an integer >= 0, got {value!r}'


CHECKS: dict[str, Check] = {
    "daemon.shutdown_grace_s": _non_negative,
    "daemon.health_interval_s": _positive,
    "devices.max_temperature_c": _positive,
    "devices.cpu_workers": _cpu_workers,
    "experiment.time_budget_s": _positive,
    "experiment.grace_s": _non_negative,
    "experiment.kill_grace_s": _non_negative,
    "experiment.min_improvement": _non_negative,
    "experiment.replicates": _non_negative,
    "experiment.min_replicates": _positive,
    "experiment.incumbent_runs": _positive,
    "experiment.significance": _probability,
    "experiment.confirm_share": _share,
    "experiment.confirm_share_max": _share,
    "experiment.confirmations": _positive,
    "experiment.max_confirmations": _positive,
    "experiment.keep_runs": _positive,
    "proposer.max_changes": _positive,
    "proposer.weights": _weights,
    "proposer.max_history": _positive,
    "proposer.command_timeout_s": _positive,
    "memory.claim_ttl_s": _non_negative,
    "hub.listen_port": _listen_port,
    "hub.database": _hub_database,
    "hub.max_body_bytes": _positive,
    "hub.max_value_bytes": _positive,
    "hub.rate_limit_per_s": _positive,
    "hub.rate_limit_burst": _positive,
    "hub.rate_limit_ip_per_s": _positive,
    "hub.rate_limit_ip_burst": _positive,
    "hub.auth_rate_limit_per_s": _positive,
    "hub.auth_rate_limit_burst": _positive,
    "hub.replicates": _non_negative,
    "hub.max_confirmations": _positive,
    "hub.significance": _probability,
    "hub.pool_size": _positive,
    "hub.workers": _positive,
    "hub.smtp_port": _port,
}


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``; raise :class:`ConfigError` with one line on any problem."""
    source = Path(path).expanduser()
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("file not found", path=str(source)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(source)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=str(source)) from None
    except UnicodeDecodeError:
        raise ConfigError("invalid TOML: not UTF-8 text", path=str(source)) from None
    return parse_config(raw, source=source)


def parse_config(raw: Mapping[str, Any], *, source: Path = Path("<defaults>")) -> Config:
    """Validate an already-parsed TOML table; paths resolve against ``source``'s folder."""
    reader = _Reader(source)
    reader.reject_unknown(raw, SECTIONS, "")
    sections = {
        name: reader.section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()
    }
    config = _derive(Config(source=source, **sections))
    if "hub" in raw:  # a hub's config: check what `hub serve` would otherwise fail on
        _check_hub_mail(config)
    return config


def _check_hub_mail(config: Config) -> None:
    """A hub that requires email needs a server to send the verification links through;
    several worker processes need a database they can share and a port they agree on."""
    if config.hub.workers > 1 and not config.hub.database.startswith(POSTGRES_URLS):
        raise ConfigError(
            "expected a postgresql:// database for hub.workers > 1 (a SQLite hub is one process)",
            path=str(config.source),
            key="hub.workers",
        )
    if config.hub.workers > 1 and config.hub.listen_port == 0:
        raise ConfigError(
            "expected a fixed hub.listen_port for hub.workers > 1, not 0",
            path=str(config.source),
            key="hub.workers",
        )
    if config.hub.require_email and not config.hub.smtp_host:
        raise ConfigError(
            "expected a mail server when hub.require_email = true"
            " (or require_email = false: registration replies then carry the link)",
            path=str(config.source),
            key="hub.smtp_host",
        )
    if config.hub.smtp_user and config.hub.smtp_password_file == UNSET_PATH:
        raise ConfigError(
            "expected a password file when hub.smtp_user is set",
            path=str(config.source),
            key="hub.smtp_password_file",
        )


def _derive(config: Config) -> Config:
    """Fill the settings whose defaults depend on others."""
    daemon, experiment, memory = config.daemon, config.experiment, config.memory
    if not daemon.agent:
        daemon = dataclasses.replace(daemon, agent=default_agent_name())
    if experiment.data_dir == UNSET_PATH:
        experiment = dataclasses.replace(experiment, data_dir=StateDir(daemon.state_dir).data)
    if not experiment.python:
        experiment = dataclasses.replace(experiment, python=sys.executable)
    if memory.path == UNSET_PATH:
        memory = dataclasses.replace(memory, path=StateDir(daemon.state_dir).memory)
    if memory.backend == "ensue" and not memory.url:
        raise ConfigError(
            'expected a URL when backend = "ensue"', path=str(config.source), key="memory.url"
        )
    if experiment.trust == "sandboxed" and experiment.sandbox == "off":
        raise ConfigError(
            'expected "auto" or "required" when trust = "sandboxed"',
            path=str(config.source),
            key="experiment.sandbox",
        )
    return dataclasses.replace(config, daemon=daemon, experiment=experiment, memory=memory)


#: Settings a reload keeps at their running values, logging that they wait for a restart:
#: devices, memory and the state dir are opened once at start-up, and claims made and data
#: prepared under the old agent, track or data dir would otherwise be released, published
#: or looked for under the new one. (The sandbox also hides the running key file and state
#: dir by these settings.)
RESTART_ONLY = (
    "devices.gpus",
    "devices.exclude",
    "devices.cpu_workers",
    "memory",
    "daemon.state_dir",
    "daemon.agent",
    "experiment.track",
    "experiment.data_dir",
)


def reload_config(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` as a reload applies it, and the dotted keys whose change waits for a restart."""
    waiting = [key for key in RESTART_ONLY if _get(new, key) != _get(running, key)]
    for key in waiting:
        section, _, name = key.partition(".")
        value = _get(running, key)
        if name:
            value = dataclasses.replace(getattr(new, section), **{name: value})
        new = dataclasses.replace(new, **{section: value})
    return new, waiting


def _get(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def config_search_path(
    environ: Mapping[str, str], *, system: Path = SYSTEM_CONFIG
) -> list[tuple[Path, str]]:
    """Where a command without ``--config`` looks, in order, each with how it was chosen:
    ``$AUTORESEARCHD_CONFIG`` alone when set, else ``system``, then the user's config
    folder (``$XDG_CONFIG_HOME`` when it is an absolute path, as the XDG spec asks, else
    ``~/.config``). Pure: it looks at no file."""
    if named := environ.get(CONFIG_ENV):
        return [(Path(named).expanduser(), f"${CONFIG_ENV}")]
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        user, how = Path(xdg) / USER_CONFIG, "$XDG_CONFIG_HOME"
    else:
        home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
        user, how = home / ".config" / USER_CONFIG, "the user's config folder"
    return [(system, "the system config"), (user, how)]


def default_agent_name() -> str:
    """A stable, readable agent name for this machine."""
    host = socket.gethostname().split(".")[0].lower() or "agent"
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in host)


class _Reader:
    """Validates tables against dataclass fields, building error messages with the key path."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.base = source.parent if source.name != "<defaults>" else Path.cwd()

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=str(self.source), key=key)

    def reject_unknown(
        self, table: Mapping[str, Any], known: Mapping[str, Any], prefix: str
    ) -> None:
        for key in table:
            if key not in known:
                hint = difflib.get_close_matches(key, list(known), n=1)
                suffix = f" (did you mean {hint[0]}?)" if hint else ""
                raise self.fail(f"{prefix}{key}", f"unknown key{suffix}")

    def section(self, name: str, cls: type[Any], table: Any) -> Any:
        if not isinstance(table, dict):
            raise self.fail(name, f"expected a table, got {_show(table)}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        self.reject_unknown(table, fields, f"{name}.")
        hints = get_type_hints(cls)
        values = {
            key: self.value(f"{name}.{key}", hints[key], value, fields[key])
            for key, value in table.items()
        }
        return cls(**values)

    def value(self, key: str, hint: Any, value: Any, spec: dataclasses.Field[Any]) -> Any:
        if key == "devices.gpus":
            return self.gpus(key, value)
        if key == "devices.exclude":
            return self.device_refs(key, value, expected="expected a list of indices/UUIDs")
        converted = self.convert(key, hint, value)
        if spec.metadata.get("path"):
            converted = self.path(converted)
        check = CHECKS.get(key)
        problem = check(converted) if check else None
        if problem:
            raise self.fail(key, problem)
        return converted

    def path(self, value: Path) -> Path:
        if value == UNSET_PATH:
            return value
        expanded = value.expanduser()
        return expanded if expanded.is_absolute() else (self.base / expanded).resolve()

    def convert(self, key: str, hint: Any, value: Any) -> Any:
        origin = get_origin(hint)
        if origin is Literal:
            return self.literal(key, get_args(hint), value)
        if origin in (Union, types.UnionType):
            return self.union(key, get_args(hint), value)
        if origin is tuple:
            return self.sequence(key, get_args(hint)[0], value)
        if origin is dict:
            return self.table(key, get_args(hint)[1], value)
        return self.scalar(key, hint, value)

    def literal(self, key: str, choices: tuple[Any, ...], value: Any) -> Any:
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise self.fail(key, f"expected one of {_choices(choices)}, got {_show(value)}")

    def union(self, key: str, options: tuple[Any, ...], value: Any) -> Any:
        errors = []
        for option in options:
            try:
                return self.convert(key, option, value)
            except ConfigError as exc:
                errors.append(str(exc).rsplit(": expected ", 1)[-1].split(", got")[0])
        raise self.fail(key, f"expected {' or '.join(errors)}, got {_show(value)}")

    def sequence(self, key: str, item: Any, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {_show(value)}")
        return tuple(self.scalar(f"{key}[{i}]", item, v) for i, v in enumerate(value))

    def table(self, key: str, item: Any, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_show(value)}")
        return {name: self.scalar(f"{key}.{name}", item, v) for name, v in value.items()}

    def scalar(self, key: str, hint: Any, value: Any) -> Any:
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        if hint is str and isinstance(value, str):
            return value
        if hint is Path and isinstance(value, str):
            return Path(value)
        raise self.fail(key, f"expected {_TYPE_NAMES[hint]}, got {_show(value)}")

    def gpus(self, key: str, value: Any) -> str | tuple[str, ...]:
        if isinstance(value, str) and value in ("auto", "none"):
            return value
        if isinstance(value, list) and not value:
            raise self.fail(key, f'{GPUS_EXPECTED}, got an empty list (use "none")')
        return self.device_refs(key, value, expected=GPUS_EXPECTED)

    def device_refs(self, key: str, value: Any, *, expected: str) -> tuple[str, ...]:
        if isinstance(value, list) and all(_is_device_ref(v) for v in value):
            return tuple(str(v).strip() for v in value)
        raise self.fail(key, f"{expected}, got {_show(value)}")


_TYPE_NAMES: dict[Any, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path string",
}


def _is_device_ref(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, str) and bool(value.strip())
    )


def _choices(choices: tuple[Any, ...]) -> str:
    return ", ".join(_show(c) for c in choices)


def _show(value: Any) -> str:
    """Render a TOML value the way the user wrote it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    return repr(value)
