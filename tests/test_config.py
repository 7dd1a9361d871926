"""Config: TOML into frozen dataclasses, one-line errors naming file, key path and expectation."""

from pathlib import Path

import pytest

from autoresearchd.config import Config, reload_config
from autoresearchd.config_loader import load_config, parse_config
from autoresearchd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_example_config_is_valid_and_solo() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.memory.backend == "sqlite"
    assert config.devices.gpus == "auto"
    assert config.daemon.state_dir == ROOT / "state"
    assert config.memory.path == ROOT / "state" / "memory.sqlite"


def test_defaults_fill_every_section() -> None:
    config = parse_config({})
    assert config.experiment.time_budget_s == 300.0
    assert config.experiment.replicates == 16
    assert config.daemon.agent  # derived from the host name
    assert config.experiment.python  # the running interpreter


def test_gpus_float_names_file_key_and_expectation(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[devices]\ngpus = 3.5\n")
    assert message == (
        f"{tmp_path / 'config.toml'}: devices.gpus: "
        'expected "auto", "none" or a list of indices/UUIDs, got 3.5'
    )


def test_unknown_key_offers_did_you_mean(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[experiment]\ntime_budgt_s = 3\n")
    assert message.endswith("experiment.time_budgt_s: unknown key (did you mean time_budget_s?)")


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[deamon]\n").endswith("deamon: unknown key (did you mean daemon?)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[daemon]\nlog_format = "xml"\n',
            'daemon.log_format: expected one of "auto", "json", "console", got "xml"',
        ),
        (
            "[experiment]\ntime_budget_s = -1\n",
            "experiment.time_budget_s: expected a number > 0, got -1.0",
        ),
        (
            '[experiment]\nreplicates = "two"\n',
            'experiment.replicates: expected an integer, got "two"',
        ),
        (
            "[devices]\nyield_to_foreign_processes = 1\n",
            "devices.yield_to_foreign_processes: expected true or false, got 1",
        ),
        (
            '[devices]\ncpu_workers = "many"\n',
            'devices.cpu_workers: expected an integer or one of "auto", got "many"',
        ),
        (
            "[devices]\nexclude = [1.5]\n",
            "devices.exclude: expected a list of indices/UUIDs, got [1.5]",
        ),
        ("[memory]\npath = 3\n", "memory.path: expected a path string, got 3"),
        ("daemon = 3\n", "daemon: expected a table, got 3"),
        ('[memory]\nbackend = "ensue"\n', 'memory.url: expected a URL when backend = "ensue"'),
    ],
)
def test_bad_values_name_key_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).endswith(expected)


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    assert "invalid TOML" in error_of(tmp_path, "[daemon\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[daemon]\nstate_dir = "st"\n[experiment]\nworkspace = "ws"\n')
    )
    assert config.daemon.state_dir == tmp_path / "st"
    assert config.experiment.workspace == tmp_path / "ws"
    assert config.experiment.data_dir == tmp_path / "st" / "data"


def test_tilde_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(write(tmp_path, '[daemon]\nstate_dir = "~/st"\n'))
    assert config.daemon.state_dir == tmp_path / "st"


def test_gpu_lists_accept_indices_and_uuids(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[devices]\ngpus = [0, "GPU-abc"]\nexclude = [1]\n'))
    assert config.devices.gpus == ("0", "GPU-abc")
    assert config.devices.exclude == ("1",)


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.daemon = config.daemon  # type: ignore[misc]


def test_claim_ttl_defaults_to_twice_budget_plus_grace() -> None:
    config = parse_config({"experiment": {"time_budget_s": 10, "grace_s": 5}})
    assert config.claim_ttl_s == 30.0


@pytest.mark.parametrize(
    ("example", "sections"),
    [
        ("config.example.toml", ["daemon", "devices", "experiment", "proposer", "memory"]),
        ("hub.example.toml", ["hub"]),
    ],
)
def test_example_configs_document_every_key(example: str, sections: list[str]) -> None:
    """A key added to a section must also be shown, with its default, in the example."""
    import dataclasses
    import tomllib

    from autoresearchd.config import SECTIONS

    documented = tomllib.loads((ROOT / example).read_text())
    for name in sections:
        keys = {field.name for field in dataclasses.fields(SECTIONS[name])}
        assert keys == set(documented.get(name, {})), name


def test_negative_cpu_workers_is_refused(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[devices]\ncpu_workers = -3\n").endswith(
        'devices.cpu_workers: expected "auto" or an integer >= 0, got -3'
    )


def test_reload_keeps_identity_and_track_and_names_what_waits_for_a_restart() -> None:
    running = parse_config({"daemon": {"agent": "alice"}, "experiment": {"track": "synthetic"}})
    new = parse_config(
        {
            "daemon": {"agent": "bob"},
            "experiment": {"track": "shakespeare", "time_budget_s": 60.0},
            "devices": {"max_temperature_c": 70, "exclude": ["0"]},
        }
    )
    applied, waiting = reload_config(running, new)
    assert waiting == ["devices.exclude", "daemon.agent", "experiment.track"]
    assert applied.daemon.agent == "alice"
    assert applied.experiment.track == "synthetic"
    assert applied.devices.exclude == ()
    # Everything else takes effect from each worker's next run.
    assert applied.experiment.time_budget_s == 60.0
    assert applied.devices.max_temperature_c == 70


def test_reload_with_only_live_settings_changed_needs_no_restart() -> None:
    running = parse_config({"daemon": {"agent": "alice"}})
    new = parse_config({"daemon": {"agent": "alice"}, "proposer": {"strategy": "tpe"}})
    applied, waiting = reload_config(running, new)
    assert waiting == []
    assert applied == new


def test_reload_keeps_the_running_memory_section_whole(tmp_path: Path) -> None:
    running = parse_config({"daemon": {"agent": "alice"}})
    key = tmp_path / "key"
    new = parse_config(
        {
            "daemon": {"agent": "alice"},
            "memory": {"backend": "ensue", "url": "https://hub.example", "api_key_file": str(key)},
        }
    )
    applied, waiting = reload_config(running, new)
    assert waiting == ["memory"]
    assert applied.memory == running.memory  # the sandbox keeps hiding the key in use
