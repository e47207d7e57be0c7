"""Header values that come from data: checked at input, neutralised at output.

Names, subjects and addresses typed by people or copied from inbound mail end
up in ``Subject``/``To``/``From`` of outgoing email. Python's email package
decodes any RFC 2047 encoded-word (``=?utf-8?b?…?=``) in a value it is given,
and interpreters without the CVE-2024-6923 fix (3.11.7 among them) then write
a decoded CR/LF out raw: a header injection. So Cabinet does not rely on the
interpreter: input with control or bidi characters is refused at the domain
boundary (``unsafe_character``), and every value written to a header is made
inert first (``header_text``) and checked after folding (``set_header``).
"""

from __future__ import annotations

import re
import unicodedata
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Callable

# Characters that reorder or hide text (Trojan Source, CVE-2021-42574): shown
# to a person they can make "moc.live" read as "evil.com".
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_WHITESPACE = re.compile(r"\s+")
# ``unsafe_character``'s characters, found in one search (a walk through unicodedata.category per character
# was most of the check): Cc is U+0000-U+001F and U+007F-U+009F, Zl U+2028, Zp U+2029
# (tests/test_headers.py compares it with unicodedata's categories over every code point).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "]")


def unsafe_character(value: str) -> str | None:
    """The first character of ``value`` that must never reach a header or a terminal.

    Control characters (C0 and C1: NUL, ESC, CR, LF, TAB, DEL…), line and
    paragraph separators, and bidi controls. ``None`` if there is none.
    """
    found = _UNSAFE.search(value)
    return found.group() if found is not None else None


def describe_character(char: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE`` — for an error message, never the raw character."""
    return f"U+{ord(char):04X} {unicodedata.name(char, 'CONTROL CHARACTER')}"


def _clean(value: str) -> str:
    cleaned = "".join(" " if unsafe_character(char) else char for char in value)
    return _WHITESPACE.sub(" ", cleaned).strip()


# What ``_clean`` changes, found in one search: a control (Cc is U+0000-U+001F and U+007F-U+009F), a line
# or paragraph separator, a bidi control, whitespace other than a single space between words.
_UNCLEAN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + r"]|[^\S ]|\s\s|^\s|\s$")


def is_clean(value: str) -> bool:
    """``_clean(value) == value``, without rebuilding the text (a subject's fast path, ``mailer.mime``)."""
    return _UNCLEAN.search(value) is None


def _as_subject(text: str) -> str:
    return str(policy.default.header_factory("Subject", text))


def _as_display_name(text: str) -> str:
    header = policy.default.header_factory("To", str(Address(display_name=text, username="x", domain="example.invalid")))
    return str(header.addresses[0].display_name)


def _inert(value: str, parse: Callable[[str], str]) -> str:
    """``value`` cleaned until the email package's own parser reads it back unchanged.

    The parser (not a regular expression of ours) decides what is an
    encoded-word, so whatever it would decode is decoded here first and
    cleaned; at the fixed point nothing is left for it to turn into CR/LF.
    """
    text = _clean(value)
    for _ in range(4):
        try:
            seen = _clean(parse(text))
        except (ValueError, IndexError):  # the parser refused what it decoded (CR/LF in an address)
            seen = text.replace("=?", "= ?")
        if seen == text:
            return text
        text = seen
    text = text.replace("=?", "= ?")  # no encoded-word can start with "= ?"
    if _clean(parse(text)) != text:
        raise ValueError("header text does not settle")
    return text


def header_text(value: str) -> str:
    """``value`` made safe to write as one unstructured header (Subject).

    Control, separator and bidi characters become spaces, runs of whitespace
    one space, and encoded-words are decoded (then cleaned) rather than left
    for the email package to decode on the way out.
    """
    return _inert(value, _as_subject)


def display_name_text(value: str) -> str:
    """Like ``header_text``, for the display name of an address (``To: Name <a@b>``)."""
    return _inert(value, _as_display_name)


def terminal_text(value: str) -> str:
    """``value`` safe to print to an operator's terminal (no escapes, no bidi tricks)."""
    return "".join(f"\\u{ord(char):04x}" if unsafe_character(char) else char for char in value)


def _folded_lines_are_continuations(folded: str) -> bool:
    lines = folded.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return all(line[:1] in (" ", "\t") for line in lines[1:]) and "\r" not in folded.replace("\r\n", "")


def set_header(message: EmailMessage, name: str, value: str | Address) -> None:
    """Write one header and check what it folds to is exactly one header.

    The check is the last line of defence: whatever the interpreter's email
    package does with the value, a header that would start a new header line
    (or end the header block) raises instead of being sent.
    """
    if not isinstance(value, Address):  # an Address's display name is cleaned by its maker
        value = header_text(value)
        if not value.isascii():
            # Encoded-words made here, from text already cleaned: the email package's own folding
            # can double a space before an accented word at a fold ("Garage  Lévesque").
            raw = Header(value, "utf-8", header_name=name).encode()
            if not _folded_lines_are_continuations(raw):
                raise ValueError(f"refusing to write a {name} header that would not stay one header")
            message.set_raw(name, raw)
            return
    message[name] = value
    folded = message.policy.fold(name, message[name])
    if not _folded_lines_are_continuations(folded):
        del message[name]
        raise ValueError(f"refusing to write a {name} header that would not stay one header")
