"""The log's token redaction (``daemon.logs.redact``) shortens exactly what its plain case-insensitive
pattern does: the pattern was rewritten for speed (a first-character class, the case folding scoped to
the prefix), and a credential it missed would be printed in the log whole."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.logs import KEEP, TOKEN, redact

# The pattern as first written: the whole of it case-insensitive.
PLAIN = re.compile(
    r"(?P<prefix>(?:/|%2F)(?:invitations(?:/|%2F)renew|invitations|company|transfers|setup|payment)(?:/|%2F)"
    r"|(?:reply|bounce)\+)"
    r"(?P<token>[A-Za-z0-9_\-.]+)",
    re.IGNORECASE,
)

# Pieces a log line is made of, and the characters case folding matches beyond ASCII
# (İ ı ſ K: "ſetup" is "setup" to a case-insensitive pattern, and K the Kelvin sign a "k").
PIECES = [
    "/", "%2F", "%2f", "+", "invitations", "INVITATIONS", "renew", "Renew", "company", "transfers", "setup",
    "payment", "reply", "Bounce", "ſetup", "ınvitations", "İnvitations", "payment", "companyK", "WzVd.",
    "abc-_.", "x", " ", '"', "?next=", "\u212a", "\u0130", "\u0131", "\u017f", "é", "…",
]


def plain_redact(text: str) -> str:
    def shorten(match: re.Match[str]) -> str:
        token = match.group("token")
        if token.lower() in ("renew", "renew%2f"):
            return match.group(0)
        return f"{match.group('prefix')}{token[: min(KEEP, len(token) // 4)]}…"

    return PLAIN.sub(shorten, text)


@settings(max_examples=3000, derandomize=True, database=None, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_redaction_shortens_what_the_case_insensitive_pattern_does(text: str) -> None:
    assert redact(text) == plain_redact(text)


def test_every_character_case_folding_adds_to_the_token_is_in_it() -> None:
    """The token's class lists the non-ASCII characters the case-insensitive class matched: none is
    missing or extra."""
    plain = re.compile(r"[A-Za-z0-9_\-.]", re.IGNORECASE)
    token = re.compile(TOKEN.pattern.split("(?P<token>")[1][:-2])  # the class, alone
    assert [c for c in range(0x110000) if plain.fullmatch(chr(c))] == \
        [c for c in range(0x110000) if token.fullmatch(chr(c))]


def test_an_access_line_keeps_a_few_characters_of_its_token() -> None:
    line = '127.0.0.1 "GET /INVITATIONS/WzMyNCwiZ2hTeVJ5SFhp.aw_NjQ.ajfDbuorntzYQ HTTP/1.1" 200 2786 0.000400s'
    assert redact(line) == '127.0.0.1 "GET /INVITATIONS/WzMyNC… HTTP/1.1" 200 2786 0.000400s'
    assert redact("bounce+ſecret.token@cabinet.example") == "bounce+ſec…@cabinet.example"
