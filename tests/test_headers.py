"""Header injection: whatever a name or subject holds, the written message has
exactly the headers Cabinet meant, on any Python 3.11 patch level.

The strings are the attacks from the hostile-input review: an encoded-word
that decodes to CR/LF (CVE-2024-6923 on interpreters without the fix), raw
CR/LF, NUL, ESC and bidi overrides.
"""

from __future__ import annotations

import base64
import sys
import unicodedata
from datetime import datetime, timezone
from email import message_from_bytes, policy

import pytest

from mailer.headers import BIDI_CONTROLS, header_text, terminal_text, unsafe_character
from mailer.message import build_message

INJECTED = "Hi\r\nReply-To: billing@evil.example\r\n\r\nattacker body"
ATTACKS = [
    "=?utf-8?b?" + base64.b64encode(INJECTED.encode()).decode() + "?=",
    "Re: =?utf-8?q?x=0D=0AReply-To:=20billing@evil.example?=",
    # double-encoded: decodes to an encoded word that decodes to CR/LF
    "=?utf-8?b?" + base64.b64encode(("=?utf-8?b?" + base64.b64encode(INJECTED.encode()).decode() + "?=").encode()).decode() + "?=",
    INJECTED,
    "Oak\x00Garage\x1b[31m",
    "Garage \u202eelgoog.evil\u202c",
    "Line\u2028Separator",
]


def build(subject: str, to_name: str) -> bytes:
    message = build_message(
        from_address="Cabinet <cabinet@cabinet.example>",
        to="admin@company.example",
        to_name=to_name,
        subject=subject,
        text="body",
        html="<p>body</p>",
        message_id="<1@cabinet.example>",
        date=datetime(2026, 11, 30, tzinfo=timezone.utc),
        auto_submitted=True,
        reply_to="reply+abc@cabinet.example",
    )
    return message.as_bytes()


@pytest.mark.parametrize("attack", ATTACKS)
def test_subject_and_name_cannot_add_headers(attack: str) -> None:
    raw = build(f"Invitation: {attack}", attack)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert sorted(parsed.keys()) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "Reply-To", "Auto-Submitted", "MIME-Version", "Content-Type"]
    )
    assert parsed["Reply-To"] == "reply+abc@cabinet.example"
    assert parsed["To"].addresses[0].addr_spec == "admin@company.example"
    assert b"billing@evil.example\r\n\r\n" not in raw and b"\nReply-To: billing" not in raw
    for char in str(parsed["Subject"]) + str(parsed["To"]):
        assert unsafe_character(char) is None, repr(char)
    assert parsed.get_body(("plain",)).get_content().strip() == "body"


def test_header_text_keeps_ordinary_text() -> None:
    assert header_text("Érablière Gagné & fils — « Oak »") == "Érablière Gagné & fils — « Oak »"
    assert header_text("a =?utf-8?q?x?= b") == "a x b"  # decoded, then cleaned
    assert header_text("=?utf-8?q?x=0D=0Ay?=") == "x y"
    assert header_text("two\r\nlines") == "two lines"


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\r", "\n", "\t", "\x7f", "\x85", "\u202e", "\u2066", "\u2028"])
def test_unsafe_characters_are_found(char: str) -> None:
    assert unsafe_character(f"name{char}x") == char
    assert "\\u" in terminal_text(f"name{char}x")


def test_unsafe_characters_are_the_control_separator_and_bidi_characters_of_every_code_point() -> None:
    """``unsafe_character`` searches a fixed set: it is what unicodedata's categories say, over all of Unicode."""
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        expected = char in BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Zl", "Zp")
        assert (unsafe_character(f"a{char}b{char}") == char) is expected, f"U+{code:04X}"


def test_address_with_control_characters_is_refused() -> None:
    with pytest.raises(ValueError):
        build_message(
            from_address="Cabinet <cabinet@cabinet.example>",
            to="admin\r\nBcc: x@evil.example@company.example",
            to_name="x",
            subject="s",
            text="t",
            html="h",
            message_id="<2@cabinet.example>",
            date=datetime(2026, 11, 30, tzinfo=timezone.utc),
            auto_submitted=False,
        )
