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
        # make_msgid's shape (a header's length, hence its folding, is the same): <time.pid.64-bit.cabinet@…>
        time_cs, pid, number, _ = made[1:].split(".", 3)
        assert time_cs.isdigit() and pid.isdigit() and number.isdigit() and int(number) < 2 ** 64
        header = message_from_bytes(f"Message-ID: {made}\r\n\r\n".encode(), policy=default)["Message-ID"]
        assert str(header) == made and not header.defects


def test_no_message_id_repeats_within_an_outbox_or_between_two() -> None:
    first, second = MessageIds("cabinet.example"), MessageIds("cabinet.example")
    made = [ids.new() for _ in range(5000) for ids in (first, second)]
    assert len(set(made)) == len(made)


def test_the_number_wraps_at_64_bits_without_repeating() -> None:
    ids = MessageIds("cabinet.example")
    ids._start = (1 << 64) - 2  # the random start just below the top
    made = [ids.new() for _ in range(4)]
    assert [int(m.split(".")[2]) for m in made] == [(1 << 64) - 2, (1 << 64) - 1, 0, 1]
