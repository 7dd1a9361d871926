"""The settings: one frozen dataclass per TOML section, with its defaults as named constants.

This module is the config's schema and nothing else: each field carries its type and its
default, and :class:`Config` holds one instance per section. Reading a file into these,
with validation and one clear line for any problem, is :mod:`autoresearchd.config_loader`;
what a reload may change while the daemon runs is :func:`reload_config`. Nothing here
opens sockets, NVML or databases.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
#: The most confirmations by other agents a claim is looked at with (worker/confirming.py).
DEFAULT_HUB_MAX_CONFIRMATIONS = 6
#: The chance that other agents' confirmations of a claim no better than the best move it.
DEFAULT_HUB_SIGNIFICANCE = 1e-3
DEFAULT_HUB_POOL_SIZE = 10  # PostgreSQL connections per hub process
DEFAULT_SMTP_PORT = 587
DEFAULT_WORKSPACE_IGNORE = (".git", ".venv", "__pycache__", "*.pyc", ".mypy_cache", "state")

#: ``hub.database`` may name its SQLite file as a URL: ``sqlite:///rel`` or ``sqlite:////abs``.
SQLITE_URL = "sqlite:///"
POSTGRES_URLS = ("postgresql://", "postgres://")


#: Marks a field as a path: resolved against the config file's folder, "~" expanded.
PATH = {"path": True}
#: An empty path means "derive from other settings" (``config_loader`` fills it in).
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
    # Rerunning other agents' claims (autoresearchd/worker/confirming.py): the share of runs spent
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
    # default: with the default proposer, benchmarks/early_stopping.py measures fewer GPU-hours
    # per improvement, but 5.5% of true improvements stopped on one family (the goal is 5%)
    # and a measurably better best on equal GPU-hours on one family of four.
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
    workers: int = 1  # hub processes sharing listen_port and the database (SQLite or PostgreSQL)
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
