"""``autoresearchd best --history``: the lineage of a track's best, from each backend."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import anyio
import httpx

from autoresearchd.memory.ensue_client import EnsueMemory
from tests.hub.support import ORG, free_port, hub_process, serve_hub, write_hub_config
from tests.memory.conformance import make_result
from tests.test_cli_results import cli, fill
from tests.test_confirming import history_of_agreement


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


def test_a_hubs_unscored_baseline_reads_unscored(tmp_path: Path) -> None:
    """``hub init --baseline`` seeds best/ with no score yet: ``best`` must not say inf."""
    baseline = tmp_path / "train.py"
    baseline.write_text("LR = 0.01\n")
    config = write_hub_config(tmp_path, free_port())
    init = cli("hub", "init", "--config", str(config), "--baseline", str(baseline))
    assert init.returncode == 0, init.stderr
    with serve_hub(config, tmp_path / "hub.log"):
        port = tomllib.loads(config.read_text())["hub"]["listen_port"]
        url = f"http://127.0.0.1:{port}/"
        key = httpx.post(f"{url}auth/agent-register", json={"name": "alice"}).json()["api_key"]
        key_file = tmp_path / "hub.key"
        key_file.write_text(key)
        os.chmod(key_file, 0o600)
        daemon = tmp_path / "daemon.toml"
        daemon.write_text(
            f'[experiment]\ntrack = "synthetic"\n[memory]\nbackend = "ensue"\n'
            f'url = "{url}"\norg = "{ORG}"\napi_key_file = "{key_file}"\n'
        )
        done = cli("best", "--config", str(daemon))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:3] == ["track", "synthetic", "unscored"]


def test_claims_by_an_agent_that_lost_its_standing_are_flagged(tmp_path: Path) -> None:
    """carol's runs of the sources alice and bob agree on sit far below theirs: her move of
    the best is flagged, alice's is not."""
    config = sqlite_config(tmp_path)
    history = history_of_agreement(liar_gap=0.2)
    honest = make_result(val_bpb=2.95, agent_id="alice", completed_at=1e9, description="LR up")
    disputed = make_result(val_bpb=2.5, agent_id="carol", completed_at=2e9, description="LR 9")
    fill(config, *history, honest, disputed)
    table = cli("best", "--history", "--config", str(config))
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["TIME", "AGENT", "VAL_BPB", "SHA", "DESCRIPTION", "FLAG"]
    reason = "disputed: 4 of its sources disagree with other agents' runs"
    assert rows[0].split()[2] == "carol" and rows[0].endswith(reason)
    assert rows[1].split()[2] == "alice" and not rows[1].endswith(reason)
    listed = json.loads(cli("best", "--history", "--json", "--config", str(config)).stdout)
    assert [(c["agent_id"], c["flag"]) for c in listed] == [("carol", reason), ("alice", "")]
