"""The [hub] config section: hub.example.toml parses and documents the real defaults, and
check-config refuses what `hub serve` would fail on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoresearchd.config import HubConfig
from autoresearchd.config_loader import load_config, parse_config
from autoresearchd.errors import ConfigError
from tests.daemon_process import cli

ROOT = Path(__file__).resolve().parents[2]


def test_hub_example_documents_the_defaults() -> None:
    """Every value is the default but the org, and require_email, so that it runs mail-less."""
    config = load_config(ROOT / "hub.example.toml")
    assert dataclasses.replace(config.hub, org="", require_email=True) == HubConfig()
    assert (config.hub.org, config.hub.require_email) == ("autoresearch", False)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_body_bytes", 0, "> 0"),
        ("rate_limit_per_s", -1.0, "> 0"),
        ("listen_port", "x", "integer"),
        ("rate_limit_ip_per_s", 0, "> 0"),
        ("rate_limit_ip_burst", 0, "> 0"),
        ("auth_rate_limit_per_s", 0, "> 0"),
        ("auth_rate_limit_burst", -1, "> 0"),
        ("replicates", -1, ">= 0"),
        ("pool_size", 0, "> 0"),
        ("pool_size", 2.5, "integer"),
        ("workers", 0, "> 0"),
        ("replication", "others", "other-agent"),
        ("require_email", "yes", "true or false"),
        ("name_only_registration", 1, "true or false"),
        ("smtp_security", "ssl", "starttls"),
        ("smtp_port", 0, "port from 1 to 65535"),
        ("smtp_port", 70000, "port from 1 to 65535, got 70000"),
        ("listen_port", 99999, "port from 0 to 65535, got 99999"),
        ("listen_port", 65536, "port from 0 to 65535"),
        ("listen_port", -1, "port from 0 to 65535"),
        ("database", "sqlite://hub.sqlite", "sqlite:///<file>"),
        ("database", "sqlite:///", "sqlite:///<file>"),
        ("database", "sqlite:///:memory:", "sqlite:///<file>"),
        ("database", "sqlite:///hub.sqlite?mode=ro", "sqlite:///<file>"),
        ("database", "sqlite:hub.sqlite", 'got a "sqlite:" URL'),
        ("database", "mysql://hub:secret@db/hub", 'got a "mysql:" URL'),
        ("database", "postgresql+psycopg://db/hub", 'got a "postgresql\\+psycopg:" URL'),
        ("database", "file:///srv/hub.sqlite", 'got a "file:" URL'),
    ],
)
def test_bad_hub_values_name_their_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"hub\.{key}: expected .*{expected}") as refused:
        parse_config({"hub": {"require_email": False, key: value}})
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    "database", ["", "hub.sqlite", "sqlite:///hub.sqlite", "postgresql://db/h"]
)
def test_several_hub_workers_share_any_database_on_a_fixed_port(database: str) -> None:
    hub = {"require_email": False, "database": database, "workers": 2}
    assert parse_config({"hub": hub}).hub.workers == 2
    with pytest.raises(ConfigError, match=r"hub\.workers: expected a fixed hub\.listen_port"):
        parse_config({"hub": hub | {"listen_port": 0}})


def test_new_hub_keys_have_safe_defaults() -> None:
    """Email is required, two replicates are needed, and the SMTP password is a file."""
    hub = parse_config({}).hub
    assert (hub.require_email, hub.replicates, hub.replication) == (True, 2, "other-agent")
    assert (hub.max_confirmations, hub.significance) == (6, 1e-3)
    assert (hub.smtp_host, hub.smtp_security, hub.smtp_port) == ("", "starttls", 587)
    hub_table = {"smtp_host": "mail.example.org", "smtp_password_file": "secret"}
    parsed = parse_config(
        {"hub": hub_table | {"replication": "any"}}, source=Path("/etc/hub.toml")
    ).hub
    assert parsed.smtp_password_file == Path("/etc/secret")
    assert parsed.replication == "any"


def test_hub_database_is_a_postgresql_url_verbatim_or_a_file_next_to_the_config(
    tmp_path: Path,
) -> None:
    from autoresearchd.hub.admin import database_path

    url = "postgresql://hub@db.internal:5432/hub?options=-csearch_path%3Dhub"
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndatabase = "{url}"\nrequire_email = false\n')
    assert database_path(load_config(config)) == url
    config.write_text('[hub]\ndatabase = "data/hub.sqlite"\nrequire_email = false\n')
    assert database_path(load_config(config)) == tmp_path / "data" / "hub.sqlite"
    config.write_text('[daemon]\nstate_dir = "state"\n')
    assert database_path(load_config(config)) == tmp_path / "state" / "hub.sqlite"


@pytest.mark.parametrize(
    ("database", "relative"),
    [("sqlite:///data/hub.sqlite3", "data/hub.sqlite3"), ("sqlite:///{abs}", "abs/hub.sqlite3")],
)
def test_hub_database_may_be_a_sqlite_url(tmp_path: Path, database: str, relative: str) -> None:
    """sqlite:/// URLs name the file, never a folder called "sqlite:" (four slashes: absolute)."""
    from autoresearchd.hub.admin import database_path

    database = database.format(abs=tmp_path / "abs" / "hub.sqlite3")
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndatabase = "{database}"\nrequire_email = false\norg = "o"\n')
    assert database_path(load_config(config)) == tmp_path / relative
    done = cli("hub", "init", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / relative).is_file()
    assert not any("sqlite:" in path.name for path in tmp_path.rglob("*"))


@pytest.mark.parametrize(
    ("hub", "key"),
    [
        ({"org": "o"}, "hub.smtp_host"),
        ({"require_email": True, "smtp_port": 25}, "hub.smtp_host"),
        ({"smtp_host": "mail.example.org", "smtp_user": "hub"}, "hub.smtp_password_file"),
    ],
)
def test_a_hub_config_that_cannot_send_its_mail_is_refused(
    hub: dict[str, object], key: str
) -> None:
    """Requiring email without a mail server once passed check-config and failed at serve."""
    with pytest.raises(ConfigError, match=rf"^/etc/hub.toml: {key}: expected ") as refused:
        parse_config({"hub": hub}, source=Path("/etc/hub.toml"))
    assert "\n" not in str(refused.value)


def test_a_daemon_config_without_a_hub_table_needs_no_mail_server() -> None:
    assert parse_config({"memory": {"backend": "sqlite"}}).hub.require_email is True


def test_check_config_names_the_file_and_key_of_a_port_out_of_range(tmp_path: Path) -> None:
    """listen_port = 99999 was a traceback at serve; now check-config refuses it in one line."""
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nlisten_port = 99999\nrequire_email = false\n")
    done = cli("check-config", str(config))
    assert done.returncode == 2
    assert done.stderr == (
        f"autoresearchd: {config}: hub.listen_port: expected a port from 0 to 65535, got 99999\n"
    )


def test_a_sqlite_file_whose_folder_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """A database under a regular file was a FileExistsError traceback from hub init."""
    (tmp_path / "afile").write_text("")
    config = tmp_path / "hub.toml"
    database = tmp_path / "afile" / "hub.sqlite"
    config.write_text(f'[hub]\ndatabase = "{database}"\nrequire_email = false\norg = "o"\n')
    for command in ("init", "serve"):
        done = cli("hub", command, "--config", str(config))
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr == f"autoresearchd: {database}: cannot create its folder: File exists\n"
