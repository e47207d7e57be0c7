"""Headers parsed once for all messages (rawmail.HeaderCache) read exactly as parsed for each message."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

from daemon import rawmail
from daemon.autoreplies import is_auto_reply
from daemon.replies import reply_text
from tests.mail_corpus import FIXTURES, names, raw

EXTRA = [
    b"From: =?utf-8?q?Andr=C3=A9?= <andre@b.example>\r\nContent-Type: text/plain; charset=latin-1\r\n\r\ncaf\xe9\r\n",
    b"From: a@b.example, c@d.example\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>\r\n",
    b"From: broken <<@>\r\nContent-Type: text/plain; charset=\"nonexistent-charset\"\r\n\r\nhi\r\n",
    b"FROM: A <a@b.example>\r\ncontent-type: TEXT/PLAIN; CHARSET=UTF-8\r\n\r\nhi\r\n",
]


def reads(message: EmailMessage) -> dict[str, Any]:
    """What processing reads from a message."""
    return {
        "from": [(str(v), getattr(v, "addresses", None), tuple(map(str, v.defects))) for v in message.get_all("From", [])],
        "type": message.get_content_type(),
        "params": list(message.get_params() or []),
        "parts": [(p.get_content_type(), p.get_content_charset(), p.get_content_disposition()) for p in message.walk()],
        "text": reply_text(message),
        "auto": is_auto_reply(message, "x@y.example"),
    }


def test_shared_headers_read_as_each_message_alone() -> None:
    corpus = [raw(name) for name in names("")] + EXTRA
    assert len(corpus) > 20, FIXTURES
    cache = rawmail.HeaderCache(size=8)  # small: it also empties itself along the way
    for _ in range(2):  # the second time round every repeated header comes from the cache
        for data in corpus:
            assert reads(rawmail.parse(data, cache)) == reads(rawmail.parse(data)), data[:200]
