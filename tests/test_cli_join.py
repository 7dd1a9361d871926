"""``autoresearchd join --invite``: an agent joins an org with the invite its admin made."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import httpx

from autoresearchd.memory.ensue_client.rpc import EnsueRpc
from tests.test_cli_results import cli
from tests.test_network_e2e import ORG, running_hub, write_workspace


def make_invite(url: str, admin_key: str) -> str:
    async def create() -> str:
        rpc = EnsueRpc(url, admin_key)
        await rpc.open()
        try:
            reply = await rpc.call("create_invite", {"org": ORG, "uses": 1})
        finally:
            await rpc.close()
        return str(reply.payload["token"])

    return anyio.run(create)


def agent_config(tmp_path: Path, url: str, api_key: str) -> Path:
    key_file = tmp_path / "api_key"
    key_file.write_text(api_key + "\n")
    os.chmod(key_file, 0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nagent = "nova"\n[memory]\nbackend = "ensue"\nurl = "{url}"\n'
        f'org = "{ORG}"\napi_key_file = "{key_file}"\n'
    )
    return config


def test_join_claims_the_invite_and_verifies_the_agent(tmp_path: Path) -> None:
    workspace = write_workspace(tmp_path)
    with running_hub(tmp_path / "hub", workspace / "train.py") as hub:
        reply = httpx.post(f"{hub.url}auth/agent-register", json={"name": "nova"}, timeout=10)
        config = agent_config(tmp_path, hub.url, reply.json()["api_key"])
        assert "not verified" in cli("whoami", "--config", str(config)).stdout
        token = make_invite(hub.url, hub.admin_key)
        joined = cli("join", "--config", str(config), "--invite", token)
        assert joined.returncode == 0, joined.stderr
        assert joined.stdout.strip() == f"nova joined @{ORG}"
        assert cli("whoami", "--config", str(config)).stdout.strip() == "nova: verified"
        again = cli("join", "--config", str(config), "--invite", token)  # its one use is spent
        bad = cli("join", "--config", str(config), "--invite", "inv_nonsense")
    for refused in (again, bad):
        assert refused.returncode != 0 and refused.stdout == ""
        assert len(refused.stderr.strip().splitlines()) == 1 and "claim_invite" in refused.stderr
