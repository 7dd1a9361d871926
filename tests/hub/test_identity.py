"""Identity on the hub: registration, email verification over real SMTP, whoami, limits."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from autoresearchd.config import HubConfig
from autoresearchd.errors import ConfigError
from autoresearchd.hub.mail import SmtpMailer
from tests.hub.support import (
    TEST_HUB,
    InProcessHub,
    cli,
    free_port,
    hub_process,
    in_process_hub,
    write_hub_config,
)

pytestmark = pytest.mark.anyio

LINK = re.compile(r"https?://\S+/auth/verify\?agent=\S+&code=\S+")


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def link(self) -> str:
        body = self.messages[-1].get_body(("plain",))
        assert body is not None
        found = LINK.search(body.get_content())
        assert found is not None, body.get_content()
        return found.group(0)


class Logins:
    """An aiosmtpd authenticator that accepts one user and records attempts."""

    def __init__(self, user: str, password: str) -> None:
        self.expected = (user.encode(), password.encode())
        self.seen: list[tuple[bytes, bytes]] = []

    def __call__(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.seen.append((data.login, data.password))
        return AuthResult(success=(data.login, data.password) == self.expected)


@dataclasses.dataclass
class MailServer:
    port: int
    inbox: Inbox


@pytest.fixture
def smtp() -> Iterator[MailServer]:
    """A real SMTP server on a free loopback port."""
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield MailServer(port, inbox)
    finally:
        controller.stop()


def mail_config(port: int, **changes: Any) -> HubConfig:
    return dataclasses.replace(
        TEST_HUB,
        require_email=True,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="plain",
        smtp_from="hub@example.org",
        **changes,
    )


@pytest.fixture
async def mail_hub(tmp_path: Path, smtp: MailServer) -> AsyncIterator[InProcessHub]:
    config = mail_config(smtp.port)
    hub = await in_process_hub(tmp_path / "hub.sqlite", config, SmtpMailer(config))
    yield hub
    await hub.store.close()


@pytest.fixture
async def http(mail_hub: InProcessHub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=mail_hub.transport(), base_url="http://hub.test") as c:
        yield c


async def whoami(http: httpx.AsyncClient, key: str) -> Any:
    reply = await http.get("/auth/whoami", headers={"Authorization": f"Bearer {key}"})
    return reply.json()


async def test_registration_mails_a_link_that_verifies_the_agent(
    http: httpx.AsyncClient, smtp: MailServer
) -> None:
    reply = await http.post(
        "/auth/agent-register", json={"name": "nova", "email": "nova@example.org"}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert "claim_url" not in body and "verification_code" not in body
    key = body["api_key"]
    (message,) = smtp.inbox.messages
    assert (message["To"], message["From"]) == ("nova@example.org", "hub@example.org")
    assert key not in message.as_string()
    assert await whoami(http, key) == {"agent": "nova", "verified": False, "admin": False}
    opened = await http.get(smtp.inbox.link())
    assert opened.status_code == 200 and "nova is verified" in opened.text
    assert (await http.get(smtp.inbox.link())).status_code == 200  # a second click is fine
    assert await whoami(http, key) == {"agent": "nova", "verified": True, "admin": False}


async def test_posting_the_code_verifies_and_a_wrong_code_does_not(
    http: httpx.AsyncClient, smtp: MailServer
) -> None:
    reply = await http.post(
        "/auth/agent-register", json={"name": "nova", "email": "nova@example.org"}
    )
    key = reply.json()["api_key"]
    code = smtp.inbox.link().rsplit("code=", 1)[1]
    for name, wrong in (("nova", "not-the-code"), ("someone", code), ("nova", "")):
        bad = await http.post("/auth/verify", json={"name": name, "code": wrong})
        assert bad.status_code == 404
        assert (await http.get(f"/auth/verify?agent={name}&code={wrong}")).status_code == 404
    assert (await whoami(http, key))["verified"] is False
    good = await http.post("/auth/verify", json={"name": "nova", "code": code})
    assert good.json() == {"agent": "nova", "verified": True}
    assert (await whoami(http, key))["verified"] is True


async def test_a_hub_that_requires_email_refuses_registration_without_one(
    http: httpx.AsyncClient, smtp: MailServer
) -> None:
    for body in ({"name": "nova"}, {"name": "nova", "email": "not-an-address"}):
        reply = await http.post("/auth/agent-register", json=body)
        assert reply.status_code == 400, body
    assert smtp.inbox.messages == []


@pytest.mark.parametrize(
    "body",
    [
        {"name": "admin\n", "email": "a@b.org"},
        {"name": "nova\r\n", "email": "a@b.org"},
        {"name": "nova", "email": "nova@example.org\n"},
        {"name": "nova", "email": "no\x07va@example.org"},
        {"name": "nova", "email": "nova\u200b@example.org"},
        {"name": "nova", "email": "nova@example.org\u202e"},
    ],
)
async def test_names_and_emails_must_match_whole_without_control_characters(
    http: httpx.AsyncClient, smtp: MailServer, body: dict[str, str]
) -> None:
    """``$`` once let "admin\\n" register; a newline or hidden character is refused."""
    reply = await http.post("/auth/agent-register", json=body)
    assert reply.status_code == 400, reply.text
    assert smtp.inbox.messages == []


async def test_names_are_unique_and_bound_to_their_key(
    http: httpx.AsyncClient, smtp: MailServer
) -> None:
    first = await http.post("/auth/agent-register", json={"name": "nova", "email": "a@b.org"})
    again = await http.post("/auth/agent-register", json={"name": "nova", "email": "c@d.org"})
    assert first.status_code == 200 and again.status_code == 409
    assert len(smtp.inbox.messages) == 1
    assert (await whoami(http, "ard_unknown")) == {"error": "unknown API key"}


async def test_unsendable_mail_is_a_503_and_frees_the_name(tmp_path: Path) -> None:
    config = mail_config(free_port())  # nothing listens there
    hub = await in_process_hub(tmp_path / "hub.sqlite", config, SmtpMailer(config))
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        body = {"name": "nova", "email": "nova@example.org"}
        failed = await http.post("/auth/agent-register", json=body)
        assert failed.status_code == 503 and "register again later" in failed.json()["error"]
        again = await http.post("/auth/agent-register", json=body)
        assert again.status_code == 503  # not 409: the first attempt left nothing behind
    await hub.store.close()


async def test_smtp_login_uses_the_password_file(tmp_path: Path) -> None:
    inbox, logins, port = Inbox(), Logins("hub", "s3cret"), free_port()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=logins, auth_require_tls=False
    )
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    password.chmod(0o600)
    config = mail_config(port, smtp_user="hub", smtp_password_file=password)
    controller.start()
    try:
        await SmtpMailer(config).send("nova@example.org", "subject", "body")
    finally:
        controller.stop()
    assert logins.seen == [(b"hub", b"s3cret")] and len(inbox.messages) == 1


def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    password = tmp_path / "smtp-password"
    password.write_text("s3cret\n")
    password.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        SmtpMailer(mail_config(25, smtp_user="hub", smtp_password_file=password))
    assert "s3cret" not in str(info.value)


async def test_auth_routes_are_rate_limited_per_ip_with_retry_after(
    tmp_path: Path, smtp: MailServer
) -> None:
    config = mail_config(smtp.port, auth_rate_limit_per_s=0.5, auth_rate_limit_burst=2)
    hub = await in_process_hub(tmp_path / "hub.sqlite", config, SmtpMailer(config))
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        replies = [
            await http.post("/auth/agent-register", json={"name": f"n{i}", "email": "a@b.org"})
            for i in range(3)
        ]
        verify = await http.post("/auth/verify", json={"name": "n0", "code": "x"})
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[2].headers["retry-after"] == "2" and "retry after 2 s" in replies[2].text
    assert verify.status_code == 429  # guesses at codes count against the same bucket
    await hub.store.close()


async def test_json_rpc_is_rate_limited_per_ip_too(tmp_path: Path) -> None:
    config = dataclasses.replace(TEST_HUB, rate_limit_ip_per_s=1.0, rate_limit_ip_burst=2)
    hub = await in_process_hub(tmp_path / "hub.sqlite", config)
    keys = [await hub.agent("a"), await hub.agent("b"), await hub.agent("c")]
    body = {
        "jsonrpc": "2.0",
        "method": "tools/call",
        "params": {"name": "list_keys", "arguments": {}},
        "id": 1,
    }
    async with httpx.AsyncClient(transport=hub.transport(), base_url="http://h") as http:
        replies = [
            await http.post("/", json=body, headers={"Authorization": f"Bearer {key}"})
            for key in keys  # a fresh key each time: only the IP limit can refuse
        ]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[2].headers["retry-after"] == "1"
    await hub.store.close()


def test_hub_serve_without_a_mail_server_when_email_is_required_fails_in_one_line(
    tmp_path: Path,
) -> None:
    config = write_hub_config(tmp_path, free_port(), require_email=True)
    done = cli("hub", "serve", "--config", str(config))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "hub.smtp_host" in done.stderr and str(config) in done.stderr


def daemon_config(folder: Path, url: str, key_file: Path) -> Path:
    path = folder / "daemon.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{folder / "daemon-state"}"\n'
        f'[memory]\nbackend = "ensue"\nurl = "{url}"\norg = "test"\n'
        f'api_key_file = "{key_file}"\n'
    )
    return path


def test_register_and_whoami_commands_end_to_end(tmp_path: Path, smtp: MailServer) -> None:
    """A served hub mails the link; the CLI stores the key 0600, never prints it."""
    mail: dict[str, Any] = {
        "require_email": True,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "plain",
        "smtp_from": "hub@example.org",
    }
    with hub_process(tmp_path, **mail) as hub:
        key_file = tmp_path / "keys" / "hub.key"
        config = str(daemon_config(tmp_path, hub.url, key_file))
        done = cli("register", "--config", config, "--name", "nova", "--email", "nova@ex.org")
        assert done.returncode == 0, done.stderr
        key = key_file.read_text().strip()
        assert key.startswith("ard_") and key not in done.stdout + done.stderr
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert "nova@ex.org" in done.stdout and "inbox" in done.stdout
        assert 'set daemon.agent = "nova"' in done.stdout
        before = cli("whoami", "--config", config)
        assert before.returncode == 0 and "nova: not verified" in before.stdout
        assert httpx.get(smtp.inbox.link(), timeout=10).status_code == 200
        after = cli("whoami", "--config", config)
        assert after.stdout.strip() == "nova: verified" and key not in after.stdout
        again = cli("register", "--config", config, "--name", "nova2", "--email", "a@b.org")
        assert again.returncode == 2 and "--force" in again.stderr
        assert key_file.read_text().strip() == key and len(smtp.inbox.messages) == 1
        forced = cli(
            "register", "--config", config, "--name", "nova2", "--email", "a@b.org", "--force"
        )
        assert forced.returncode == 0, forced.stderr
        assert key_file.read_text().strip() != key
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600


def test_register_reports_a_taken_name_in_one_line_and_writes_no_key(tmp_path: Path) -> None:
    with hub_process(tmp_path) as hub:
        hub.register("nova")
        key_file = tmp_path / "hub.key"
        config = str(daemon_config(tmp_path, hub.url, key_file))
        done = cli("register", "--config", config, "--name", "nova")
        assert done.returncode == 2 and "409" in done.stderr and "taken" in done.stderr
        assert done.stderr.count("\n") == 1 and not key_file.exists()
        legacy = cli("register", "--config", config, "--name", "vega")
        assert legacy.returncode == 0 and "/auth/verify?agent=vega" in legacy.stdout
