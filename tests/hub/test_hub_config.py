"""The [hub] config section: hub.example.toml parses and documents the real defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoresearchd.config import HubConfig, load_config, parse_config
from autoresearchd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_hub_example_documents_the_defaults() -> None:
    config = load_config(ROOT / "hub.example.toml")
    assert dataclasses.replace(config.hub, org="") == HubConfig()
    assert config.hub.org == "autoresearch"


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
        ("replication", "others", "other-agent"),
        ("require_email", "yes", "true or false"),
        ("smtp_security", "ssl", "starttls"),
        ("smtp_port", 0, "> 0"),
    ],
)
def test_bad_hub_values_name_their_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"hub\.{key}: expected .*{expected}"):
        parse_config({"hub": {key: value}})


def test_new_hub_keys_have_safe_defaults() -> None:
    """Email is required, two replicates are needed, and the SMTP password is a file."""
    hub = parse_config({}).hub
    assert (hub.require_email, hub.replicates, hub.replication) == (True, 2, "any")
    assert (hub.smtp_host, hub.smtp_security, hub.smtp_port) == ("", "starttls", 587)
    parsed = parse_config(
        {"hub": {"smtp_password_file": "secret", "replication": "other-agent"}},
        source=Path("/etc/hub.toml"),
    ).hub
    assert parsed.smtp_password_file == Path("/etc/secret")
    assert parsed.replication == "other-agent"


def test_hub_database_is_a_postgresql_url_verbatim_or_a_file_next_to_the_config(
    tmp_path: Path,
) -> None:
    from autoresearchd.hub.app import database_path

    url = "postgresql://hub@db.internal:5432/hub?options=-csearch_path%3Dhub"
    config = tmp_path / "hub.toml"
    config.write_text(f'[hub]\ndatabase = "{url}"\n')
    assert database_path(load_config(config)) == url
    config.write_text('[hub]\ndatabase = "data/hub.sqlite"\n')
    assert database_path(load_config(config)) == tmp_path / "data" / "hub.sqlite"
    config.write_text('[daemon]\nstate_dir = "state"\n')
    assert database_path(load_config(config)) == tmp_path / "state" / "hub.sqlite"
