"""Building the emails an MTA would deliver to Cabinet: replies, DSNs, auto-replies."""

from __future__ import annotations

import smtplib
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import create_engine, text

from daemon.config import load_config
from tests.conftest import Env

TRUSTED_MTA = "mx.cabinet.example"


def reply(
    to: str,
    sender: str,
    body: str,
    *,
    subject: str = "Re: Invitation",
    authenticated: bool = True,
    authserv_id: str = TRUSTED_MTA,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """A reply as the firm's MTA hands it over, with its Authentication-Results when ``authenticated``."""
    message = EmailMessage()
    domain = sender.split("@")[1]
    if authenticated:
        message["Authentication-Results"] = (
            f"{authserv_id}; dkim=pass header.d={domain} header.s=s1; dmarc=pass header.from={domain}"
        )
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = message_id or make_msgid(domain=domain)
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


def dsn(to: str, failed: str, original_message_id: str, status: str = "5.1.1",
        diagnostic: str = "smtp; 550 5.1.1 <{failed}>: Recipient address rejected: User unknown") -> bytes:
    """An RFC 3464 delivery status notification, shaped like Postfix's."""
    boundary = "DSN-BOUNDARY-1"
    diag = diagnostic.format(failed=failed)
    return (
        f"From: MAILER-DAEMON@mx.remote.example (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(datetime.now(timezone.utc))}\r\n"
        f"Message-ID: {make_msgid(domain='mx.remote.example')}\r\n"
        f"Auto-Submitted: auto-replied\r\n"
        f"MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        f"\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        f"<{failed}>: host mx.remote.example said: {diag}\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.remote.example\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\n"
        f"Original-Recipient: rfc822; {failed}\r\n"
        f"Action: failed\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diag}\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: text/rfc822-headers\r\n\r\n"
        f"From: Cabinet <cabinet@cabinet.example>\r\n"
        f"To: {failed}\r\n"
        f"Subject: Invitation\r\n"
        f"Message-ID: {original_message_id}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def deliver(env: Env, mail_from: str, recipients: list[str], message: EmailMessage | bytes) -> dict[str, Any]:
    # On the wire lines end in CRLF (smtplib sends bytes as they are).
    raw = message if isinstance(message, bytes) else message.as_bytes(policy=SMTP_POLICY)
    with smtplib.SMTP("127.0.0.1", env.smtp_port, timeout=30) as smtp:
        return smtp.sendmail(mail_from, recipients, raw)


def execute(env: Env, statement: str) -> None:
    """Change the real database directly (to inject a fault), committing."""
    engine = create_engine(load_config(env.config_path).database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def wait_processed(env: Env, count: int, timeout: float = 60.0, states: tuple[str, ...] = ("processed", "duplicate")) -> list[Any]:
    """Wait until ``count`` inbound messages reached a final state; return all rows."""
    deadline = time.monotonic() + timeout
    marks = ", ".join(f"'{s}'" for s in states)
    while True:
        rows = env.sql("SELECT id, state, kind, outcome FROM inbound ORDER BY id")
        done = [r for r in rows if r[1] in states]
        if len(done) >= count:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} processed inbound messages ({marks}); have {rows}")
        time.sleep(0.05)
