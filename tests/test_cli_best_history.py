"""``autoresearchd best --history``: the lineage of a track's best, from each backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio

from autoresearchd.memory.ensue import EnsueMemory
from tests.hub.support import hub_process
from tests.memory.conformance import make_result
from tests.test_cli_results import cli, fill


def sqlite_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text('[daemon]\nstate_dir = "state"\n[experiment]\ntrack = "synthetic"\n')
    return path


def test_history_from_sqlite_lists_each_move_newest_first(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    first = make_result(val_bpb=0.99, agent_id="alice", description="LR 0.04 → 0.05")
    second = make_result(val_bpb=0.95, agent_id="bob", description="DEPTH 8 → 9")
    fill(config, first, make_result(val_bpb=1.5), second)
    table = cli("best", "--history", "--config", str(config))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["TIME", "AGENT", "VAL_BPB", "SHA", "DESCRIPTION"]
    assert [row.split()[2:5] for row in rows] == [
        ["bob", "0.950000", second.train_py_sha256[:12]],
        ["alice", "0.990000", first.train_py_sha256[:12]],
    ]
    assert rows[0].endswith("DEPTH 8 → 9")
    listed = json.loads(cli("best", "--history", "--json", "--config", str(config)).stdout)
    assert [c["result_id"] for c in listed] == [second.id, first.id]


def test_history_of_an_empty_memory_says_so_and_creates_nothing(tmp_path: Path) -> None:
    config = sqlite_config(tmp_path)
    done = cli("best", "--history", "--config", str(config))
    assert done.returncode == 0 and "has not moved yet" in done.stdout
    assert not (tmp_path / "state").exists()


def test_history_from_a_hub_comes_from_its_audit_log(tmp_path: Path) -> None:
    with hub_process(tmp_path) as hub:
        key = hub.register("alice")
        key_file = tmp_path / "hub.key"
        key_file.write_text(key)
        os.chmod(key_file, 0o600)
        config = tmp_path / "daemon.toml"
        config.write_text(
            f'[experiment]\ntrack = "synthetic"\n[memory]\nbackend = "ensue"\n'
            f'url = "{hub.url}"\norg = "test"\napi_key_file = "{key_file}"\n'
        )
        result = make_result(val_bpb=1.9, description="LR up")

        async def publish() -> None:
            async with EnsueMemory(hub.url, "test", key, primary_track="synthetic") as memory:
                await memory.publish(result)

        anyio.run(publish)
        done = cli("best", "--history", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    (change,) = json.loads(done.stdout)
    assert (change["agent_id"], change["val_bpb"], change["description"]) == ("alice", 1.9, "LR up")
    assert change["train_py_sha256"] == result.train_py_sha256
