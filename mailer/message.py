"""Building the MIME message for one outbound email."""

from __future__ import annotations

from datetime import datetime
from email.header import Header
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
    if subject.isascii():
        message["Subject"] = subject
    else:
        # Folded as encoded words by hand: the email package's own folding can double a space before an
        # accented word at a fold ("Garage  Lévesque"); adjacent encoded words decode with no gap.
        message.set_raw("Subject", Header(subject, "utf-8", header_name="Subject").encode())
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
