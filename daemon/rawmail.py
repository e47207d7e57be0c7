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
# Where an empty line starts: after a line's end (LF, or CR not followed by LF), a CR or LF. The
# parser splits lines at CRLF, CR and LF; "\r\n" alone is one line's end, every other pair is not.
_EMPTY_LINE = re.compile(rb"\n[\r\n]|\r\r")


def header_block(raw: bytes) -> bytes:
    """``raw`` up to its first empty line (the end of its last header line kept), or all of it.

    The header parser stops at the first line that is no header, at the
    latest at the first empty line, so it reads from this what it reads from
    ``raw``; without the cut it read the body's lines too (a 5 KB reply's
    header parse cost 2-4 times as much).
    """
    empty = _EMPTY_LINE.search(raw)
    return raw if empty is None else raw[:empty.start() + 1]


# A header block as nearly every MTA writes it: every line CRLF-ended, either a field's name (printable
# ASCII, no colon) and a colon, or a folded continuation (space or tab first). The parser splits lines at
# CR and LF only, and reads such a block as exactly these fields, so its Message-ID is read here without
# the parser (a tenth of its cost); any other block goes to the parser.
_PLAIN_BLOCK = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*")
_MESSAGE_ID_FIELD = re.compile(rb"^message-id:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.IGNORECASE | re.MULTILINE)


def _message_id_field(block: bytes) -> str | None:
    """The first Message-ID field's value in the header block ``block``, as the compat32 parser gives
    it (up to whitespace, which ``message_id`` folds), or None if there is none."""
    if _PLAIN_BLOCK.fullmatch(block):
        found = _MESSAGE_ID_FIELD.search(block)
        return None if found is None else found[1].decode("ascii", "surrogateescape")
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(block)
    return next((str(value) for name, value in headers.raw_items() if name.lower() == "message-id"), None)


def message_id(raw: bytes, limit: int = 255) -> str | None:
    """The first Message-ID of ``raw`` as stored for duplicate checks, or None if it has no usable one.

    ``<>``, ``<``, a value of control characters or undecodable bytes is no
    Message-ID (the standard library's header parser raises on some of these).
    """
    try:
        value = _message_id_field(header_block(raw))
    except Exception:  # the parser is meant never to raise; a message is stored regardless
        return None
    if value is None:
        return None
    text = " ".join(value.split())
    match = _BRACKETED.search(text) or _BARE.fullmatch(text.split(" ")[0])
    if match is None or len(match.group(0)) > limit:
        return None
    return match.group(0)


def storable(text: str, limit: int) -> str:
    """``text`` without control characters or lone surrogates, cut to ``limit`` characters."""
    return _UNSTORABLE.sub("?", text)[:limit]


class HeaderCache:
    """Parsed headers kept across messages, for the few whose values repeat from message to message
    (a client's From:, ``text/plain; charset=utf-8``): parsed once for all, not once per message.

    Bounded: emptied when full. Safe to share between threads: a race parses a header twice, no more.
    """

    NAMES = frozenset({"from", "content-type", "content-transfer-encoding", "content-disposition", "mime-version"})

    def __init__(self, size: int = 2048) -> None:
        self._size = size
        self._parsed: dict[tuple[str, str], Any] = {}

    def get(self, key: tuple[str, str]) -> Any:
        return self._parsed.get(key)

    def put(self, key: tuple[str, str], parsed: Any) -> None:
        if len(self._parsed) >= self._size:
            self._parsed = {}
        self._parsed[key] = parsed


class _ParsedOnce(EmailPolicy):
    """``policy.default``, except that a header is parsed once per message, not at every read (and,
    for ``HeaderCache.NAMES``, once for all messages when a cache is given).

    The standard library parses a header's value again each time it is read, and
    reading the body (``get_body``, ``get_content``) reads Content-Type a dozen
    times: with the sender checks and auto-reply tests, header parsing was a
    third of processing's CPU. A header object is immutable and depends only on
    its name and value, so the same one can be handed out again.
    """

    memo: dict[tuple[str, str], Any] | None = None
    shared: HeaderCache | None = None

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if self.memo is None or not isinstance(value, str) or hasattr(value, "name"):
            return super().header_fetch_parse(name, value)
        key = (name, value)
        parsed = self.memo.get(key)
        if parsed is None:
            shared = self.shared if self.shared is not None and name.lower() in HeaderCache.NAMES else None
            parsed = shared.get(key) if shared is not None else None
            if parsed is None:
                parsed = super().header_fetch_parse(name, value)
                if shared is not None:
                    shared.put(key, parsed)
            self.memo[key] = parsed
        return parsed


def parse(raw: bytes, shared: HeaderCache | None = None) -> EmailMessage:
    """``raw`` as an ``EmailMessage`` (``policy.default``), its headers parsed at most once each (the
    repeating ones once for all the messages parsed with the same ``shared`` cache)."""
    # A policy takes any of its class's attributes as a keyword (email._policybase); typeshed lists only
    # EmailPolicy's own, not a subclass's.
    once = _ParsedOnce(memo={}, shared=shared)  # type: ignore[call-overload]
    message = BytesParser(policy=once).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message
