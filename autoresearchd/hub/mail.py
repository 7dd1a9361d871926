"""Outgoing mail for the hub: verification links, sent over SMTP off the event loop.

:class:`SmtpMailer` builds one message with :mod:`email` and sends it with
:mod:`smtplib` in a worker thread, so a slow mail server never blocks the hub. It speaks
STARTTLS (submission, port 587), implicit TLS (port 465) or plain SMTP for a relay on
the same machine, and logs in when ``smtp_user`` is set, with the password read from a
file only its owner may read. Every failure becomes one :class:`HubError` naming the
server; the password never appears in logs or errors. :class:`Mailer` is the Protocol
the app needs, so tests may pass their own.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Protocol

import anyio.to_thread
import structlog

from autoresearchd.config import UNSET_PATH, HubConfig
from autoresearchd.errors import ConfigError, HubError

log = structlog.get_logger(__name__)

TIMEOUT_S = 20.0


class Mailer(Protocol):
    """Sends one plain-text message. This is a Protocol: implement, don't subclass."""

    async def send(self, to: str, subject: str, body: str) -> None: ...


def verification_message(name: str, link: str, code: str) -> tuple[str, str]:
    """The subject and body of a verification email."""
    subject = f"Verify your autoresearchd agent {name}"
    body = (
        f"Someone (hopefully you) registered the agent {name!r} with this address.\n\n"
        f"Open this link to verify it:\n\n    {link}\n\n"
        f"or post this code to /auth/verify with the agent's name:\n\n    {code}\n\n"
        "Until it is verified, its results are stored but cannot move a best.\n"
        "If you did not register, ignore this message.\n"
    )
    return subject, body


class SmtpMailer:
    """Mail through the ``[hub]`` SMTP settings (see the module docstring)."""

    def __init__(self, config: HubConfig) -> None:
        if not config.smtp_host:
            raise ConfigError("expected a mail server to send from", key="hub.smtp_host")
        self.config = config
        self.sender = config.smtp_from or f"autoresearchd@{socket.getfqdn()}"
        self._password = _read_password(config) if config.smtp_user else ""

    async def send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        message.set_content(body)
        await anyio.to_thread.run_sync(self._send, message)
        log.info("mail_sent", to=to, server=self.config.smtp_host)

    def _send(self, message: EmailMessage) -> None:
        host, port = self.config.smtp_host, self.config.smtp_port
        try:
            with self._connect() as smtp:
                if self.config.smtp_user:
                    smtp.login(self.config.smtp_user, self._password)
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            reason = type(exc).__name__
            raise HubError(
                f"cannot send mail through {host}:{port}: {reason}", status=503
            ) from None

    def _connect(self) -> smtplib.SMTP:
        host, port = self.config.smtp_host, self.config.smtp_port
        context = ssl.create_default_context()
        if self.config.smtp_security == "tls":
            return smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_S, context=context)
        smtp = smtplib.SMTP(host, port, timeout=TIMEOUT_S)
        if self.config.smtp_security == "starttls":
            try:
                smtp.starttls(context=context)
            except BaseException:
                smtp.close()
                raise
        return smtp


def _read_password(config: HubConfig) -> str:
    path = config.smtp_password_file
    key = "hub.smtp_password_file"
    if path == UNSET_PATH:
        raise ConfigError("expected a password file when hub.smtp_user is set", key=key)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"mode {mode & 0o777:04o} is too open; run chmod 600 on it", path=str(path), key=key
            )
        password = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(path), key=key) from None
    if not password:
        raise ConfigError("the password file is empty", path=str(path), key=key)
    return password
