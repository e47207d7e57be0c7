"""What the store step reads from an inbound message's raw bytes, without ever failing.

``Inbound.store`` runs while the sending MTA waits for its 250: an exception
there means 451 and the same bytes retried forever. So it reads only what it
must (the Message-ID, for the duplicate check) from the undecoded header
block, and keeps only characters every database stores (printable ASCII for
the Message-ID; no control characters, bounded length for the envelope
sender). Whatever is odd about the message is left for processing to judge.

``parse`` is processing's one parse of a message.
"""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import EmailPolicy
from typing import Any

# A msg-id as RFC 5322 writes it: "<" printable ASCII, no space or ">" ">".
_BRACKETED = re.compile(r"<([\x21-\x3d\x3f-\x7e]+)>")
# Some MTAs leave the brackets out: a bare id-left@id-right is taken as it is.
_BARE = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+@[\x21-\x3b\x3d\x3f-\x7e]+")
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def message_id(raw: bytes, limit: int = 255) -> str | None:
    """The first Message-ID of ``raw`` as stored for duplicate checks, or None if it has no usable one.

    ``<>``, ``<``, a value of control characters or undecodable bytes is no
    Message-ID (the standard library's header parser raises on some of these).
    """
    try:
        headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
        values = [value for name, value in headers.raw_items() if name.lower() == "message-id"]
    except Exception:  # the parser is meant never to raise; a message is stored regardless
        return None
    if not values:
        return None
    text = " ".join(str(values[0]).split())
    match = _BRACKETED.search(text) or _BARE.fullmatch(text.split(" ")[0])
    if match is None or len(match.group(0)) > limit:
        return None
    return match.group(0)


def storable(text: str, limit: int) -> str:
    """``text`` without control characters or lone surrogates, cut to ``limit`` characters."""
    return _UNSTORABLE.sub("?", text)[:limit]


class _ParsedOnce(EmailPolicy):
    """``policy.default``, except that a header is parsed once per message, not at every read.

    The standard library parses a header's value again each time it is read, and
    reading the body (``get_body``, ``get_content``) reads Content-Type a dozen
    times: with the sender checks and auto-reply tests, header parsing was a
    third of processing's CPU. A header object is immutable and depends only on
    its name and value, so the same one can be handed out again.
    """

    memo: dict[tuple[str, str], Any] | None = None

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if self.memo is None or not isinstance(value, str) or hasattr(value, "name"):
            return super().header_fetch_parse(name, value)
        key = (name, value)
        parsed = self.memo.get(key)
        if parsed is None:
            parsed = self.memo[key] = super().header_fetch_parse(name, value)
        return parsed


def parse(raw: bytes) -> EmailMessage:
    """``raw`` as an ``EmailMessage`` (``policy.default``), its headers parsed at most once each."""
    message = BytesParser(policy=_ParsedOnce(memo={})).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message
