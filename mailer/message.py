"""Building the MIME message for one outbound email."""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr


def new_message_id(domain: str) -> str:
    return make_msgid(idstring="cabinet", domain=domain)


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
    message["From"] = from_address
    local, _, domain = to.partition("@")
    message["To"] = Address(display_name=to_name, username=local, domain=domain)
    message["Subject"] = subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = message_id
    if reply_to:
        message["Reply-To"] = reply_to
    if auto_submitted:
        # RFC 3834: tells auto-responders (out-of-office) not to answer.
        message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def address_of(header_value: str) -> str:
    return parseaddr(header_value)[1]
