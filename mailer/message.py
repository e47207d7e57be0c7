"""Building the MIME message for one outbound email."""

from __future__ import annotations

import itertools
import os
import secrets
import time
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from mailer import mime
from mailer.headers import display_name_text, set_header, unsafe_character


class MessageIds:
    """New Message-IDs for one outbox, in ``make_msgid(idstring="cabinet")``'s shape and length:
    ``<TIME.PID.N.cabinet@DOMAIN>``, N a 64-bit number.

    ``make_msgid`` reads the clock, the pid and 64 random bits for every email (9k instructions under
    callgrind, two emails an accept). Here they are read once, when the outbox is made, and N counts on
    from the random start, modulo 2**64: unique within the outbox (no repeat before 2**64 emails), and
    between outboxes (processes, restarts, instances on one database) by the time and pid, and by 64 random
    bits as ``make_msgid``'s are, from ``secrets`` rather than ``random``."""

    def __init__(self, domain: str) -> None:
        self._prefix = f"<{int(time.time() * 100)}.{os.getpid()}."
        self._suffix = f".cabinet@{domain}>"
        self._start = secrets.randbits(64)
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{(self._start + next(self._counter)) & _BITS_64}{self._suffix}"


_BITS_64 = (1 << 64) - 1


def check_recipient(to: str) -> tuple[str, str]:
    """The local part and domain of ``to``; ValueError if no email should go there."""
    local, _, domain = to.partition("@")
    if unsafe_character(to) is not None or not local or not domain:
        raise ValueError("refusing to send to an address with control characters or no domain")
    return local, domain


def build_message(
    *,
    from_address: str,
    to: str,
    to_name: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
    auto_submitted: bool,
    reply_to: str | None = None,
) -> EmailMessage:
    """A multipart/alternative (text + HTML) message with Cabinet's standard headers."""
    message = EmailMessage()
    # Every value from data goes through set_header: see mailer.headers for why.
    set_header(message, "From", from_address)
    local, domain = check_recipient(to)
    set_header(message, "To", Address(display_name=display_name_text(to_name), username=local, domain=domain))
    set_header(message, "Subject", subject)
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    if reply_to:
        set_header(message, "Reply-To", reply_to)
    if auto_submitted:
        # RFC 3834: tells auto-responders (out-of-office) not to answer.
        message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def message_bytes(
    *,
    from_address: str,
    to: str,
    to_name: str,
    subject: str,
    text: str,
    html: str,
    message_id: str,
    date: datetime,
    auto_submitted: bool,
    reply_to: str | None = None,
    boundary: bytes | None = None,
) -> bytes:
    """``build_message(...).as_bytes()``, the same bytes written directly (``mailer.mime``): the worker's hot path."""
    local, domain = check_recipient(to)
    headers = [
        mime.from_header(from_address),
        mime.to_header(to_name, local, domain),
        mime.subject_header(subject),
        mime.date_header(date),
        mime.message_id_header(message_id),
    ]
    if reply_to:
        headers.append(mime.reply_to_header(reply_to))
    if auto_submitted:
        headers.append(b"Auto-Submitted: auto-generated\n")
    return mime.alternative(headers, text, html, boundary)


def address_of(header_value: str) -> str:
    return parseaddr(header_value)[1]
