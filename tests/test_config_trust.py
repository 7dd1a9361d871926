"""Config: the trust policy and sandbox keys, their defaults, and their one-line errors."""

from pathlib import Path

import pytest

from autoresearchd.config_loader import load_config, parse_config
from autoresearchd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_params_only_in_an_automatic_sandbox() -> None:
    experiment = parse_config({}).experiment
    assert experiment.trust == "params-only"
    assert experiment.sandbox == "auto"


def test_example_config_documents_and_sets_the_defaults() -> None:
    text = (ROOT / "config.example.toml").read_text()
    assert 'trust = "params-only"' in text
    assert 'sandbox = "auto"' in text
    experiment = load_config(ROOT / "config.example.toml").experiment
    assert (experiment.trust, experiment.sandbox) == ("params-only", "auto")


@pytest.mark.parametrize("trust", ["params-only", "sandboxed", "any"])
@pytest.mark.parametrize("sandbox", ["auto", "required"])
def test_every_policy_combines_with_a_sandbox(trust: str, sandbox: str) -> None:
    experiment = parse_config({"experiment": {"trust": trust, "sandbox": sandbox}}).experiment
    assert (experiment.trust, experiment.sandbox) == (trust, sandbox)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[experiment]\ntrust = "all"\n',
            'experiment.trust: expected one of "params-only", "sandboxed", "any", got "all"',
        ),
        (
            "[experiment]\nsandbox = false\n",
            'experiment.sandbox: expected one of "auto", "off", "required", got false',
        ),
        (
            '[experiment]\ntrust = "sandboxed"\nsandbox = "off"\n',
            'experiment.sandbox: expected "auto" or "required" when trust = "sandboxed"',
        ),
    ],
)
def test_bad_values_name_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).endswith(expected)
