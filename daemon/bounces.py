"""Understand delivery failure reports (bounces).

flufl.bounce (GNU Mailman's detectors) decides whether a message is a bounce
and which recipients failed: it knows RFC 3464 DSNs and the non-standard
shapes MTAs still send, which hand-written heuristics would get wrong. It says
nothing about why, so the reason and the Message-ID of the message that
bounced are read here from the report's parts with the standard library.

Call it only on mail addressed to a ``bounce+`` address: the heuristic
detectors look for phrases ("could not be delivered") that a person's reply
could contain too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from typing import cast

# A line of an SMTP error reply quoted in a text bounce: "550-5.1.1 The email account…" (more
# lines follow) or "550 5.1.1 <jane@…>: User unknown" (the last line).
_SMTP_LINE = re.compile(r"\s*(?P<code>[45]\d\d)(?P<more>[ -])(?:(?P<status>[45]\.\d{1,3}\.\d{1,3})\s)?\s*(?P<text>.*)")
# Text bounces (Exim's classic one) quote the original message inline, headers included.
_INLINE_MESSAGE_ID = re.compile(r"^Message-ID:\s*(<[^>\s]+>)", re.IGNORECASE | re.MULTILINE)
_HEADERS_TYPES = ("text/rfc822-headers", "message/rfc822-headers")


@dataclass(frozen=True)
class Bounce:
    """A delivery failure: ``recipients`` are the permanent failures if there are any, else the delayed ones."""

    recipients: tuple[str, ...]
    permanent: bool
    reason: str  # the remote server's own words: for operators (stored rows, logs), never shown to people
    original_message_id: str | None
    status: str | None = None  # the RFC 3463 status code ("5.1.1"), when the report gives one


# What people are told about a failed delivery is Cabinet's own wording chosen from the status code
# (the remote text is anyone's words: it can carry links); the templates word each cause per language.
CAUSES = {
    "5.1.1": "no_such_address", "5.1.10": "no_such_address", "5.1.6": "no_such_address",
    "5.1.2": "no_such_domain", "5.4.4": "no_such_domain",
    "5.2.2": "mailbox_full", "4.2.2": "mailbox_full",
    "5.2.1": "mailbox_disabled",
}
CAUSE_WORDING = {
    "no_such_address": "the address does not exist",
    "no_such_domain": "the address's domain does not receive email",
    "mailbox_full": "the mailbox is full",
    "mailbox_disabled": "the mailbox is disabled",
    "refused": "the receiving server refused it",
    # Not a status a server gives: the relay kept deferring it until ``[mail] give_up_after`` passed.
    "unreachable": "no server accepted it in the time Cabinet keeps trying",
}
_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


def status_in(text: str | None) -> str | None:
    """The first RFC 3463 status code written in ``text`` ("550 5.1.1 <x>: …" → "5.1.1"), if any."""
    match = _STATUS.search(text or "")
    return match.group(1) if match else None


def cause(status: str | None) -> str:
    """Cabinet's name for why an email could not be delivered (a key of ``CAUSE_WORDING``)."""
    return CAUSES.get(status or "", "refused")


class UnreadableBounce(Exception):
    """A detector (or the standard library under it) raised on this message: not a bounce we can read.

    flufl.bounce's detectors and the email package raise on hostile input
    (IndexError on an empty From, ValueError on a NUL charset, AttributeError
    on a group address); processing classifies the message ``unparseable``.
    """


def parse_bounce(message: Message) -> Bounce | None:
    """The failure ``message`` reports, or None when it reports none (not a bounce, or a success DSN).

    Raises ``UnreadableBounce`` (and nothing else) when the report cannot be read.
    """
    try:
        return _parse_bounce(message)
    except Exception as exc:
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        module = where.tb_frame.f_globals.get("__name__", "?") if where is not None else "?"
        raise UnreadableBounce(f"{type(exc).__name__} in {module}: {exc}"[:500]) from exc


def _parse_bounce(message: Message) -> Bounce | None:
    # Imported on the first bounce, not by every command that builds Cabinet (its detectors compile
    # many patterns).
    from flufl.bounce import all_failures

    temporary, permanent = all_failures(message)  # flufl.bounce returns (temporary, permanent)
    failed = permanent or temporary
    if not failed:
        return None
    # Addresses come back as bytes; Cabinet compares addresses case-insensitively throughout.
    recipients = tuple(sorted({address.decode("ascii").lower() for address in failed}))
    reason = _dsn_reason(message, permanent=bool(permanent)) or _text_reason(message) or "delivery failed"
    return Bounce(
        recipients=recipients,
        permanent=bool(permanent),
        reason=reason,
        original_message_id=_original_message_id(message),
        status=_dsn_status(message, permanent=bool(permanent)) or status_in(reason),
    )


def _dsn_status(message: Message, permanent: bool) -> str | None:
    """The Status of the first RFC 3464 per-recipient block of the reported kind."""
    wanted = ("failed", "error") if permanent else ("delayed",)
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        for block in cast(list[Message], part.get_payload())[1:]:
            if str(block.get("Action", "")).strip().lower().startswith(wanted):
                if status := status_in(str(block.get("Status", ""))):
                    return status
    return None


def _dsn_reason(message: Message, permanent: bool) -> str:
    """The Diagnostic-Code (else Status) of each RFC 3464 per-recipient block of the reported kind."""
    wanted = ("failed", "error") if permanent else ("delayed",)
    reasons: list[str] = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
            continue
        # The first block describes the reporting MTA; the others are one per recipient.
        for block in cast(list[Message], part.get_payload())[1:]:
            if not str(block.get("Action", "")).strip().lower().startswith(wanted):
                continue
            diagnostic = _unfold(str(block.get("Diagnostic-Code", "")))
            # "smtp; 550 …": the part before ";" names the kind of code, not the problem.
            reason = diagnostic.partition(";")[2].strip() if ";" in diagnostic else diagnostic
            reason = reason or (f"status {_unfold(str(block['Status']))}" if block["Status"] else "")
            if reason and reason not in reasons:
                reasons.append(reason)
    return "; ".join(reasons)


def _text_reason(message: Message) -> str:
    """The first SMTP error reply quoted in the human-readable text, for bounces without a DSN."""
    for text in _text_parts(message):
        words: list[str] = []
        for line in text.splitlines():
            match = _SMTP_LINE.fullmatch(line.rstrip())
            if match is None or (words and not words[0].startswith(match["code"])):
                if words:
                    break
                continue
            if not words:
                words.append(" ".join(filter(None, (match["code"], match["status"]))))
            words.append(match["text"])
            if match["more"] == " ":
                break
        if words:
            return _unfold(" ".join(words))
    return ""


def _original_message_id(message: Message) -> str | None:
    """The Message-ID of the email the report is about: the returned copy's, else an Original-Message-ID field."""
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822" and part.is_multipart():
            original = cast(Message, part.get_payload(0))
            return _message_id(original.get("Message-ID"))
        if content_type in _HEADERS_TYPES:
            headers = HeaderParser().parsestr(_decoded(part))
            return _message_id(headers.get("Message-ID"))
    for part in message.walk():
        # Some MTAs (and RFC 8098 reports) name the original by an Original-Message-ID field in a report block.
        if part.get_content_type() in ("message/delivery-status", "message/disposition-notification"):
            blocks = part.get_payload() if part.is_multipart() else [HeaderParser().parsestr(_decoded(part))]
            for block in cast(list[Message], blocks):
                if named := _message_id(block.get("Original-Message-ID")):
                    return named
    for text in _text_parts(message):
        if match := _INLINE_MESSAGE_ID.search(text):
            return match.group(1)
    return None


def _text_parts(message: Message) -> list[str]:
    """Decoded text/plain parts, leaving out the quoted original (its text is not the report)."""
    texts = []
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            break  # walk() is depth-first: what follows is inside the original message
        if part.get_content_type() == "text/plain":
            texts.append(_decoded(part))
    return texts


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    try:
        return data.decode(part.get_content_charset() or "utf-8", "replace")
    except LookupError:  # a charset Python does not know: the text is still mostly readable
        return data.decode("utf-8", "replace")


def _message_id(value: object) -> str | None:
    text = _unfold(str(value or ""))
    return text or None


def _unfold(text: str) -> str:
    return " ".join(text.split())
