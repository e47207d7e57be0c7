"""An outbox's Message-IDs (``mailer.message.MessageIds``): made from what is read once per outbox plus a
counter, instead of ``make_msgid``'s clock, pid and random bits per email. Each is still a valid msg-id in
Cabinet's domain, and none repeats, within an outbox or between two."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import default

from mailer.message import MessageIds

# RFC 5322's msg-id with a dot-atom on each side (``id-left "@" id-right``), as make_msgid's are.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
MSG_ID = re.compile(rf"<{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*>")


def test_message_ids_are_msg_ids_in_the_domain() -> None:
    ids = MessageIds("cabinet.example")
    for _ in range(100):
        made = ids.new()
        assert MSG_ID.fullmatch(made), made
        assert made.endswith(".cabinet@cabinet.example>")
        header = message_from_bytes(f"Message-ID: {made}\r\n\r\n".encode(), policy=default)["Message-ID"]
        assert str(header) == made and not header.defects


def test_no_message_id_repeats_within_an_outbox_or_between_two() -> None:
    first, second = MessageIds("cabinet.example"), MessageIds("cabinet.example")
    made = [ids.new() for _ in range(5000) for ids in (first, second)]
    assert len(set(made)) == len(made)
