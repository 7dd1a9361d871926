"""Proposer keys: strategies, the mixed weights table, the agent command, one-line errors."""

from pathlib import Path

import pytest

from autoresearchd.config import DEFAULT_MIXED_WEIGHTS
from autoresearchd.config_loader import load_config, parse_config
from autoresearchd.errors import ConfigError


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults_are_portfolio_and_document_mixed_weights() -> None:
    proposer = parse_config({}).proposer
    assert proposer.strategy == "portfolio"
    assert proposer.weights == DEFAULT_MIXED_WEIGHTS
    assert DEFAULT_MIXED_WEIGHTS == {"portfolio": 0.7, "hypotheses": 0.2, "command": 0.1}
    assert (proposer.command, proposer.command_timeout_s, proposer.max_history) == ((), 600.0, 2000)
    assert proposer.share_notes


def test_mixed_weights_table_and_command_list_are_read(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[proposer]\nstrategy = "mixed"\nweights = {tpe = 1, hypotheses = 0.5}\n'
        'command = ["agent", "--fast"]\ncommand_timeout_s = 30\n'
    )
    proposer = load_config(path).proposer
    assert proposer.weights == {"tpe": 1.0, "hypotheses": 0.5}
    assert proposer.command == ("agent", "--fast")
    assert proposer.command_timeout_s == 30.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("weights = {tpe = -1}", "proposer.weights: expected weights >= 0, got tpe = -1.0"),
        ("weights = {tpe = 0}", "proposer.weights: expected at least one weight > 0"),
        (
            "weights = {bogus = 1}",
            "proposer.weights: unknown strategy 'bogus' (expected one of portfolio, perturb, "
            "tpe, hypotheses, command)",
        ),
        ('weights = {tpe = "a"}', 'proposer.weights.tpe: expected a number, got "a"'),
        ("weights = 3", "proposer.weights: expected a table, got 3"),
        (
            'strategy = "genetic"',
            'proposer.strategy: expected one of "portfolio", "perturb", "tpe", "mixed", '
            '"hypotheses", "command", got "genetic"',
        ),
        ("command_timeout_s = 0", "proposer.command_timeout_s: expected a number > 0, got 0.0"),
        ('command = "agent"', 'proposer.command: expected a list, got "agent"'),
    ],
)
def test_bad_proposer_values_name_key_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert error_of(tmp_path, f"[proposer]\n{text}\n").endswith(expected)
