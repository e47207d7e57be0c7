"""Where outbound mail goes: a local Maildir (embedded default) or an SMTP relay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import aiosmtplib

from daemon.config import RelayConfig
from mailer.maildir import deliver


class TransportError(Exception):
    """Sending failed; ``permanent`` says whether retrying can help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None: ...


class MaildirTransport:
    """Delivers into a Maildir, as a local delivery agent would."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _deliver(self, envelope_from: str, raw: bytes) -> None:
        # A delivery agent records the envelope sender as Return-Path. The outbox marks
        # the row sent right after this returns, so ``deliver`` puts the file on disk first.
        deliver(self.path, b"Return-Path: <" + envelope_from.encode() + b">\r\n" + raw)

    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        try:
            await asyncio.to_thread(self._deliver, envelope_from, raw)
        except OSError as exc:
            # A full or read-only disk: a failed attempt like a relay's 4xx, counted and retried.
            raise TransportError(f"maildir delivery failed: {exc.strerror or exc}") from None


class SmtpTransport:
    """Relays through an SMTP server (the firm's MTA) with aiosmtplib."""

    def __init__(self, relay: RelayConfig, timeout: float = 30.0) -> None:
        self._relay = relay
        self._timeout = timeout

    async def send(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        relay = self._relay
        try:
            await aiosmtplib.send(
                raw,
                sender=envelope_from,
                recipients=recipients,
                hostname=relay.host,
                port=relay.port,
                use_tls=relay.tls == "tls",
                start_tls=True if relay.tls == "starttls" else False,
                username=relay.user or None,
                password=relay.password.reveal() or None,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            permanent = all(500 <= r.code < 600 for r in exc.recipients)
            raise TransportError(f"recipient refused: {exc.recipients[0].message}", permanent) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise TransportError(f"relay answered {exc.code} {exc.message}", 500 <= exc.code < 600) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransportError(f"relay unreachable: {exc}") from None
