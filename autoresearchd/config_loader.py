"""Read a TOML config into the :mod:`autoresearchd.config` dataclasses, or fail with one clear line.

Reading is separate from building: nothing here opens sockets, NVML or databases. One
generic validator walks the sections' fields, so a wrong value or an unknown key becomes a
:class:`ConfigError` naming the file, the dotted key path and what was expected; the
settings whose defaults depend on others are then derived. Relative paths resolve against
the config file's folder, and ``~`` expands. :func:`config_search_path` says where a
command without ``--config`` looks.
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
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from autoresearchd.config import POSTGRES_URLS, SECTIONS, SQLITE_URL, UNSET_PATH, Config
from autoresearchd.errors import ConfigError
from autoresearchd.statedir import StateDir

GPUS_EXPECTED = 'expected "auto", "none" or a list of indices/UUIDs'
#: Names the config file for commands run without ``--config``.
CONFIG_ENV = "AUTORESEARCHD_CONFIG"
#: Where a packaged or system-wide install keeps its config (the systemd unit reads it).
SYSTEM_CONFIG = Path("/etc/autoresearchd/config.toml")
#: The config file inside the user's config folder (``$XDG_CONFIG_HOME`` or ``~/.config``).
USER_CONFIG = Path("autoresearchd/config.toml")
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

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
    several worker processes need a port they agree on."""
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
