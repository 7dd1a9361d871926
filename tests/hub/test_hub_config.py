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
    ],
)
def test_bad_hub_values_name_their_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"hub\.{key}: expected .*{expected}"):
        parse_config({"hub": {key: value}})
